//! Config parsing and validation: shipped files parse, defaults stay on loopback, and every
//! refusal names the key it is about.

use super::*;
use std::net::IpAddr;

const SECRET: &str = "0123456789abcdef-secret";

fn minimal() -> String {
    format!("node_id = 7\ndata_dir = \"data\"\n[security]\ncluster_secret = \"{SECRET}\"\n")
}

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(text, Path::new("/etc/basalt"))
}

/// The text with `extra` appended (tables after the minimal ones).
fn with(extra: &str) -> Result<NodeConfig, ConfigError> {
    parse(&format!("{}{extra}", minimal()))
}

fn error_of(result: Result<NodeConfig, ConfigError>) -> String {
    match result {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = NodeConfig::parse(&text, &dir)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(config.data_dir.starts_with(&dir), "{}", path.display());
        count += 1;
    }
    assert!(count >= 3, "expected node1..3.toml in {}", dir.display());
}

#[test]
fn shipped_cluster_is_the_local_cluster() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for n in 1..=3u8 {
        let text = std::fs::read_to_string(dir.join(format!("node{n}.toml"))).unwrap();
        let shipped = NodeConfig::parse(&text, &dir).unwrap();
        let local = NodeConfig::local_cluster(n, &dir.join("../basalt-data"), SECRET);
        assert_eq!(shipped.node_id, local.node_id);
        assert_eq!(shipped.peer.listen, local.peer.listen);
        assert_eq!(shipped.api.listen, local.api.listen);
        assert_eq!(shipped.nbd.listen, local.nbd.listen);
        assert_eq!(shipped.meta.bootstrap, local.meta.bootstrap);
        assert_eq!(shipped.meta.join, local.meta.join);
        assert_eq!(shipped.data_dir, local.data_dir);
        assert_eq!(shipped.drives, local.drives);
    }
}

#[test]
fn defaults_listen_on_loopback_only() {
    let config = parse(&minimal()).unwrap();
    for address in [config.nbd.listen, config.api.listen, config.peer.listen] {
        assert!(address.ip().is_loopback(), "{address}");
    }
    assert_eq!(config.nbd.listen.port(), NBD_PORT_DEFAULT);
    assert_eq!(config.api.listen.port(), API_PORT_DEFAULT);
    assert_eq!(config.peer.listen.port(), PEER_PORT_DEFAULT);
    assert_eq!(config.meta.down_after, Duration::from_secs(5));
    assert_eq!(config.meta.out_after, Duration::from_secs(600));
    assert_eq!(config.meta.role, NodeRole::Voter);
    assert!(!config.meta.bootstrap && config.meta.join.is_empty());
    assert!(config.api.open_metrics);
    assert!(config.metrics.enabled);
    assert_eq!(config.cluster, ClusterParams::default());
    assert_eq!(config.peer_advertise(), "127.0.0.1:9641");
    assert_eq!(config.cluster_secret(), SecretSource::Inline(SECRET));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let config = with(
        "[[drives]]\npath = \"d0.img\"\nsize = \"64M\"\n[[drives]]\npath = \"/dev/sdb\"\n\
         [[security.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken_file = \"ops.token\"\n",
    )
    .unwrap();
    assert_eq!(config.data_dir, Path::new("/etc/basalt/data"));
    assert_eq!(config.drives[0].path, Path::new("/etc/basalt/d0.img"));
    assert_eq!(config.drives[0].size, Some(Size(64 << 20)));
    assert_eq!(config.drives[1].path, Path::new("/dev/sdb"));
    assert_eq!(config.drives[1].size, None);
    let token = &config.security.tokens[0];
    assert_eq!(
        token.source(),
        SecretSource::File(Path::new("/etc/basalt/ops.token"))
    );
    assert_eq!(token.role, TokenRole::Admin);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let cases = [
        (format!("{}bogus = 1\n", minimal()), "bogus"),
        (
            minimal().replace("[security]", "[meta]\ndown_aftr = \"1s\"\n[security]"),
            "down_aftr",
        ),
        (
            format!("{}[api]\nopen_metric = true\n", minimal()),
            "open_metric",
        ),
        (
            format!("{}[[drives]]\npath = \"x\"\nsizee = 4096\n", minimal()),
            "sizee",
        ),
        (format!("{}[nonsense]\n", minimal()), "nonsense"),
    ];
    for (text, key) in cases {
        let message = error_of(parse(&text));
        assert!(message.contains(key), "{key}: {message}");
        assert!(message.contains("unknown field"), "{message}");
    }
}

#[test]
fn bad_meta_and_cluster_values_name_the_key() {
    let cases: Vec<(Result<NodeConfig, ConfigError>, &str)> = vec![
        (
            parse(&minimal().replace("node_id = 7", "node_id = 0")),
            "node_id: must be > 0",
        ),
        (
            parse(&minimal().replace("[security]", "[meta]\ndown_after = \"0s\"\n[security]")),
            "meta.down_after: must be > 0",
        ),
        (
            parse(&minimal().replace("[security]", "[meta]\nout_after = \"5s\"\n[security]")),
            "meta.out_after:",
        ),
        (
            parse(&minimal().replace(
                "[security]",
                "[meta]\nheartbeat_interval = \"10s\"\n[security]",
            )),
            "meta.heartbeat_interval:",
        ),
        (
            parse(&minimal().replace(
                "[security]",
                "[meta]\nbootstrap = true\njoin = [\"10.0.0.1:9641\"]\n[security]",
            )),
            "meta.join:",
        ),
        (
            parse(&minimal().replace(
                "[security]",
                "[meta]\nbootstrap = true\nrole = \"follower\"\n[security]",
            )),
            "meta.bootstrap:",
        ),
        (
            parse(&minimal().replace("[security]", "[meta]\njoin = [\"nope\"]\n[security]")),
            "meta.join[0]: must be host:port",
        ),
        (
            parse(&minimal().replace("[security]", "[cluster]\npg_count = 1000\n[security]")),
            "cluster.pg_count:",
        ),
        (
            parse(&minimal().replace("[security]", "[cluster]\nmin_size = 4\n[security]")),
            "cluster.min_size:",
        ),
        (
            parse(&minimal().replace("[security]", "[cluster]\nchunk_size = \"3M\"\n[security]")),
            "cluster.chunk_size:",
        ),
    ];
    for (result, expected) in cases {
        let message = error_of(result);
        assert!(
            message.starts_with(expected),
            "want {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn bad_listen_drive_and_security_values_name_the_key() {
    let secretless = "node_id = 1\ndata_dir = \"d\"\n[security]\n";
    let cases: Vec<(Result<NodeConfig, ConfigError>, &str)> = vec![
        (
            with("[[drives]]\npath = \"a\"\n[[drives]]\npath = \"b\"\nsize = 1000\n"),
            "drives[1].size:",
        ),
        (
            with("[[drives]]\npath = \"a\"\n[[drives]]\npath = \"a\"\n"),
            "drives[1].path: listed twice",
        ),
        (parse(&format!("zone = \"Rack 1\"\n{}", minimal())), "zone:"),
        (
            with("[api]\nlisten = \"127.0.0.1:9641\"\n"),
            "peer.listen: same address as api.listen",
        ),
        (
            with("[peer]\nlisten = \"0.0.0.0:9641\"\n"),
            "peer.advertise: required when peer.listen is a wildcard address",
        ),
        (
            with("[api]\nadvertise = \"no-port\"\n"),
            "api.advertise: must be host:port",
        ),
        (
            parse(secretless),
            "security: set exactly one of cluster_secret, cluster_secret_file",
        ),
        (
            with("cluster_secret_file = \"s\"\n"),
            "security: set exactly one of cluster_secret, cluster_secret_file",
        ),
        (
            parse(&minimal().replace(SECRET, "short")),
            "security.cluster_secret: must be at least 16 bytes",
        ),
        (
            with("[[security.tokens]]\nname = \"a\"\nrole = \"admin\"\n"),
            "security.tokens[0]: set exactly one of token, token_file",
        ),
        (
            with("[[security.tokens]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"abc\"\n"),
            "security.tokens[0].token: must be at least 16 bytes",
        ),
        (
            with(
                "[[security.tokens]]\nname = \"a\"\nrole = \"admin\"\ntoken_file = \"x\"\n\
                 [[security.tokens]]\nname = \"a\"\nrole = \"read-only\"\ntoken_file = \"y\"\n",
            ),
            "security.tokens[1].name: listed twice",
        ),
    ];
    for (result, expected) in cases {
        let message = error_of(result);
        assert!(
            message.starts_with(expected),
            "want {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn wrong_types_and_units_name_the_key() {
    let cases = [
        (
            minimal().replace("[security]", "[meta]\ndown_after = 5\n[security]"),
            "down_after",
        ),
        (
            minimal().replace("[security]", "[meta]\ndown_after = \"5\"\n[security]"),
            "down_after",
        ),
        (
            minimal().replace("[security]", "[meta]\nrole = \"leader\"\n[security]"),
            "role",
        ),
        (
            format!("{}[[drives]]\npath = \"x\"\nsize = \"1.5G\"\n", minimal()),
            "size",
        ),
        (
            format!("{}[nbd]\nlisten = \"localhost\"\n", minimal()),
            "listen",
        ),
    ];
    for (text, key) in cases {
        let message = error_of(parse(&text));
        assert!(message.contains(key), "{key}: {message}");
    }
}

#[test]
fn local_cluster_configs_validate_and_round_trip() {
    let root = Path::new("/var/lib/basalt-test");
    for n in 1..=5u8 {
        let config = NodeConfig::local_cluster(n, root, SECRET);
        validate(&config).unwrap();
        assert_eq!(config.peer.listen.ip(), IpAddr::from([127, 0, 0, n]));
        assert_eq!(config.meta.bootstrap, n == 1);
        let text = config.to_toml().unwrap();
        let parsed = NodeConfig::parse(&text, Path::new("/elsewhere")).unwrap();
        assert_eq!(parsed, config, "{text}");
    }
}

#[test]
fn cluster_id_parses_as_a_uuid() {
    let id = "5f0c6d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f";
    let config = parse(&format!("cluster_id = \"{id}\"\n{}", minimal())).unwrap();
    assert_eq!(config.cluster_id.unwrap().to_string(), id);
    let message = error_of(parse(&format!("cluster_id = \"nope\"\n{}", minimal())));
    assert!(message.contains("cluster_id"), "{message}");
}

#[test]
fn scrub_section_has_defaults_and_takes_units() {
    let config = parse(&minimal()).unwrap();
    assert_eq!(config.scrub, ScrubConfig::default());
    assert!(config.scrub.enabled);
    assert_eq!(
        config.scrub.bytes_per_sec,
        Size(SCRUB_BYTES_PER_SEC_DEFAULT)
    );
    assert_eq!(config.scrub.interval, SCRUB_INTERVAL_DEFAULT);
    let config =
        with("[scrub]\nenabled = false\nbytes_per_sec = \"8MiB\"\ninterval = \"1day\"\n").unwrap();
    assert!(!config.scrub.enabled);
    assert_eq!(config.scrub.bytes_per_sec, Size(8 << 20));
    assert_eq!(config.scrub.interval, Duration::from_secs(86_400));
    let error = with("[scrub]\ninterval = \"0s\"\n").unwrap_err();
    assert!(error.to_string().contains("scrub.interval"), "{error}");
}

/// Goal: `[recovery] bytes_per_sec` defaults to 256 MiB/s and takes sizes.
#[test]
fn recovery_rate_defaults_and_parses() {
    let config = parse(&minimal()).unwrap();
    assert_eq!(config.recovery.bytes_per_sec.bytes(), 256 << 20);
    let config = parse(&minimal().replace(
        "[security]",
        "[recovery]\nbytes_per_sec = \"32MiB\"\n[security]",
    ))
    .unwrap();
    assert_eq!(config.recovery.bytes_per_sec.bytes(), 32 << 20);
}
