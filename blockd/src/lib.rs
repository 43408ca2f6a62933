//! blockd library
