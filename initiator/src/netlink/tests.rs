//! Goal: the requests are byte-for-byte what the kernel's `nbd` family expects, and every
//! kernel answer the initiator relies on parses. Method: golden bytes written out field by field
//! from the UAPI headers (`netlink.h`, `genetlink.h`, `nbd-netlink.h`) and laid next to the
//! request `nbd-client` 3.24 sends for the same device (`tests/data/nbd-client-connect.hex`);
//! parsing is checked on hand-built kernel messages and on garbage.

use super::*;

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<String>()
        .split_whitespace()
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

const NBD_FAMILY: u16 = 0x1a;

fn connect_params() -> ConnectParams {
    ConnectParams {
        index: Some(0),
        size_bytes: 1 << 30,
        block_size_bytes: 4096,
        timeout_secs: 30,
        dead_conn_timeout_secs: 120,
        // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
        server_flags: 0x016d,
        client_flags: 0,
        sockets: vec![3],
    }
}

#[test]
fn connect_golden_bytes() {
    let bytes = Request::Connect(connect_params()).encode(NBD_FAMILY, 1, 0);
    let expected = hex("
        74000000 1a00 0500 01000000 00000000  # nlmsghdr: len 116, nbd, REQUEST|ACK, seq 1, port 0
        01010000                              # genlmsghdr: CONNECT, version 1
        0800 0100 00000000                    # INDEX 0
        0c00 0200 0000004000000000            # SIZE_BYTES 1 GiB
        0c00 0300 0010000000000000            # BLOCK_SIZE_BYTES 4096
        0c00 0500 6d01000000000000            # SERVER_FLAGS
        0c00 0400 1e00000000000000            # TIMEOUT 30
        0c00 0800 7800000000000000            # DEAD_CONN_TIMEOUT 120
        0c00 0600 0000000000000000            # CLIENT_FLAGS 0
        1000 0780 0c00 0180 0800 0100 03000000 # SOCKETS { SOCK_ITEM { SOCK_FD 3 } }
    ");
    assert_eq!(bytes, expected);
}

#[test]
fn connect_first_free_device_with_two_sockets_and_no_timeouts() {
    let params = ConnectParams {
        index: None,
        timeout_secs: 0,
        dead_conn_timeout_secs: 0,
        sockets: vec![5, 6],
        ..connect_params()
    };
    let bytes = Request::Connect(params).encode(NBD_FAMILY, 7, 42);
    let expected = hex("
        60000000 1a00 0500 07000000 2a000000
        01010000
        0c00 0200 0000004000000000
        0c00 0300 0010000000000000
        0c00 0500 6d01000000000000
        0c00 0600 0000000000000000
        1c00 0780 0c00 0180 0800 0100 05000000 0c00 0180 0800 0100 06000000
    ");
    assert_eq!(bytes, expected);
}

#[test]
fn disconnect_reconfigure_status_golden_bytes() {
    let bytes = Request::Disconnect { index: 3 }.encode(NBD_FAMILY, 2, 0);
    assert_eq!(
        bytes,
        hex("1c000000 1a00 0500 02000000 00000000 02010000 0800 0100 03000000")
    );
    let bytes = Request::Reconfigure {
        index: 3,
        sockets: vec![9],
    }
    .encode(NBD_FAMILY, 3, 0);
    let expected = hex("
        2c000000 1a00 0500 03000000 00000000 03010000
        0800 0100 03000000
        1000 0780 0c00 0180 0800 0100 09000000
    ");
    assert_eq!(bytes, expected);
    let bytes = Request::Status { index: None }.encode(NBD_FAMILY, 4, 0);
    assert_eq!(bytes, hex("14000000 1a00 0500 04000000 00000000 05010000"));
    let bytes = Request::Status { index: Some(1) }.encode(NBD_FAMILY, 5, 0);
    assert_eq!(
        bytes,
        hex("1c000000 1a00 0500 05000000 00000000 05010000 0800 0100 01000000")
    );
}

#[test]
fn get_family_golden_bytes() {
    let bytes = Request::GetFamily("nbd".into()).encode(0, 9, 0);
    // CTRL family 0x10, GETFAMILY version 1, FAMILY_NAME "nbd\0".
    assert_eq!(
        bytes,
        hex("1c000000 1000 0500 09000000 00000000 03010000 0800 0200 6e626400")
    );
}

/// The request `nbd-client 3.24` sent for the same device (`tests/data/nbd-client-connect.hex`,
/// captured once in the test guest). nbd-client uses genetlink version 0, libnl's sequence and
/// port numbers, and sends no `CLIENT_FLAGS`; everything else must be byte-identical, in the
/// same order, because it is what the kernel acts on.
#[test]
fn connect_matches_nbd_client() {
    let captured = hex(include_str!("../../tests/data/nbd-client-connect.hex"));
    let family = u16::from_le_bytes([captured[4], captured[5]]);
    let ours = Request::Connect(ConnectParams {
        index: Some(3),
        size_bytes: 128 << 20,
        block_size_bytes: 4096,
        timeout_secs: 30,
        dead_conn_timeout_secs: 0,
        // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN |
        // SEND_FAST_ZERO, as Basalt offered them to nbd-client.
        server_flags: 0x096d,
        client_flags: 0,
        sockets: vec![3],
    })
    .encode(family, 1, 0);
    let header = NLMSG_HDR_BYTES;
    // Same type and flags; sequence and port are the sender's own.
    assert_eq!(captured[4..8], ours[4..8]);
    assert_eq!(captured[header], ours[header], "command");
    let ours_without_client_flags: Vec<u8> = attrs(&ours[header + GENL_HDR_BYTES..])
        .unwrap()
        .into_iter()
        .filter(|(kind, _)| *kind != attr::CLIENT_FLAGS)
        .flat_map(|(kind, value)| {
            let mut bytes = Vec::new();
            let nested = if kind == attr::SOCKETS {
                NLA_F_NESTED
            } else {
                0
            };
            put_attr(&mut bytes, kind | nested, value);
            bytes
        })
        .collect();
    assert_eq!(
        &captured[header + GENL_HDR_BYTES..],
        &ours_without_client_flags[..]
    );
    let len = usize::try_from(u32::from_le_bytes(captured[..4].try_into().unwrap())).unwrap();
    assert_eq!(len, captured.len());
}

fn ack(seq: u32, errno: i32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&36u32.to_le_bytes());
    out.extend_from_slice(&NLMSG_ERROR.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&77u32.to_le_bytes());
    out.extend_from_slice(&(-errno).to_le_bytes());
    out.extend_from_slice(&[0; 16]); // the request's header echoed back
    out
}

#[test]
fn parses_acks_and_errors() {
    let mut bytes = ack(5, 0);
    bytes.extend(ack(6, 16));
    let parsed = parse(&bytes, Some(NBD_FAMILY)).unwrap();
    assert_eq!(
        parsed,
        vec![
            Message::Ack { seq: 5 },
            Message::Error { seq: 6, errno: 16 }
        ]
    );
}

#[test]
fn parses_connect_reply_link_dead_and_status() {
    let connected = hex("1c000000 1a00 0000 08000000 4d000000 01010000 0800 0100 02000000");
    assert_eq!(
        parse(&connected, Some(NBD_FAMILY)).unwrap(),
        vec![Message::Connected { seq: 8, index: 2 }]
    );
    let dead = hex("1c000000 1a00 0000 00000000 00000000 04010000 0800 0100 02000000");
    assert_eq!(
        parse(&dead, Some(NBD_FAMILY)).unwrap(),
        vec![Message::LinkDead { index: 2 }]
    );
    // DEVICE_LIST { DEVICE_ITEM { INDEX 0, CONNECTED 1 }, DEVICE_ITEM { INDEX 1, CONNECTED 0 } }
    let status = hex("
        40000000 1a00 0000 09000000 4d000000 05010000
        2c00 0980
        1400 0180 0800 0100 00000000 0500 0200 01000000
        1400 0180 0800 0100 01000000 0500 0200 00000000
    ");
    assert_eq!(
        parse(&status, Some(NBD_FAMILY)).unwrap(),
        vec![Message::Status {
            seq: 9,
            devices: vec![
                DeviceStatus {
                    index: 0,
                    connected: true
                },
                DeviceStatus {
                    index: 1,
                    connected: false
                },
            ],
        }]
    );
    // Without the family id the same bytes are not taken for NBD.
    assert_eq!(
        parse(&dead, None).unwrap(),
        vec![Message::Other { kind: 0x1a, seq: 0 }]
    );
}

#[test]
fn parses_family_with_multicast_group() {
    let family = hex("
        48000000 1000 0000 01000000 4d000000 01020000
        0600 0100 1a00 0000                     # FAMILY_ID 0x1a
        0800 0200 6e626400                      # FAMILY_NAME nbd
        2400 0780                               # MCAST_GROUPS
          2000 0100                             #   group 1
            0800 0200 05000000                  #     GRP_ID 5
            1100 0100 6e62645f6d635f67726f757000 000000 # GRP_NAME nbd_mc_group
    ");
    let parsed = parse(&family, None).unwrap();
    assert_eq!(
        parsed,
        vec![Message::Family {
            seq: 1,
            info: FamilyInfo {
                id: 0x1a,
                mcast_groups: vec![("nbd_mc_group".into(), 5)]
            },
        }]
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [
        &b"\x01"[..],
        &b"\xff\xff\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        &hex("14000000 1a00 0000 00000000 00000000 04010000 ffff 0100")[..],
        &hex("1c000000 1a00 0000 00000000 00000000 04010000 0200 0100 02000000")[..],
    ] {
        assert!(parse(bytes, Some(NBD_FAMILY)).is_err(), "{bytes:02x?}");
    }
}
