//! Every shipped example loads; every rule names its key.

use super::*;

const MINIMAL: &str = r#"
[node]
id = 1
name = "a"
[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
advertise = "127.0.0.1"
[[backend]]
name = "pbx"
uri = "sip:127.0.0.1:5080"
"#;

/// A 32-byte secret in a temp file, for configs with a `[cluster]`.
fn secret_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("sipfront-config-test-{}.key", std::process::id()));
        std::fs::write(&p, "00112233445566778899aabbccddeeff").unwrap();
        p.display().to_string()
    })
    .clone()
}

fn cluster(extra: &str) -> String {
    format!(
        "{MINIMAL}\n[cluster]\nlisten = \"10.0.0.11:7000\"\npeers = [ {{ id = 1, addr = \"10.0.0.11:7000\" }}, \
         {{ id = 2, addr = \"10.0.0.12:7000\" }}, {{ id = 3, addr = \"10.0.0.13:7000\" }} ]\nsecret_file = \"{}\"\n{extra}",
        secret_file()
    )
}

#[test]
fn cluster_and_vip_rules_name_their_key() {
    let ok = Config::from_toml(&cluster("")).unwrap();
    let c = ok.cluster.as_ref().unwrap();
    assert_eq!((c.election_timeout.get(), c.heartbeat.get()), (Duration::from_millis(300), Duration::from_millis(60)));
    assert_eq!(ok.vip.mode, VipMode::None);
    let cases: &[(&str, &str)] = &[
        ("heartbeat = \"200ms\"", "cluster.heartbeat: must be at most a third"),
        ("election_timeout = \"20ms\"", "cluster.election_timeout"),
        ("[vip]\nmode = \"linux\"\ninterface = \"eth0\"", "vip.address: is required"),
        ("[vip]\nmode = \"linux\"\naddress = \"10.0.0.100/24\"", "vip.interface: is required"),
        ("[vip]\nmode = \"linux\"\naddress = \"10.0.0.300/24\"\ninterface = \"eth0\"", "vip.address: `10.0.0.300/24`"),
        ("[vip]\nmode = \"linux\"\naddress = \"10.0.0.100/33\"\ninterface = \"eth0\"", "prefix length"),
        ("[vip]\nmode = \"aws\"", "vip.address: is required"),
        ("[vip]\nmode = \"cloud\"", "unknown variant `cloud`"),
    ];
    for (extra, want) in cases {
        let e = err(&cluster(extra));
        assert!(e.contains(want), "{extra:?}: got {e:?}, want {want:?}");
    }
    let e = err(&cluster("").replace("id = 1, addr", "id = 4, addr"));
    assert!(e.contains("cluster.peers: no entry has this node's id (1"), "{e}");
    let e = err(&cluster("").replace("12:7000", "11:7000"));
    assert!(e.contains("cluster.peers[1].addr"), "{e}");
    let e = err(&cluster("").replace(&secret_file(), "/nonexistent/key"));
    assert!(e.contains("cluster.secret_file: cannot read /nonexistent/key"), "{e}");
    let e = err(&format!("{MINIMAL}\n[vip]\nmode = \"linux\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n"));
    assert!(e.contains("vip.mode: a VIP moves between cluster nodes"), "{e}");
}

#[test]
#[cfg(not(feature = "aws"))]
fn aws_modes_need_the_feature() {
    let e = err(&cluster("[vip]\nmode = \"aws\"\naddress = \"10.0.1.100/24\"\ninterface = \"eth0\"\n"));
    assert!(e.contains("vip.mode: \"aws\" needs sipfront built with the `aws` cargo feature"), "{e}");
}

#[test]
#[cfg(feature = "aws")]
fn aws_and_volume_rules_name_their_key() {
    const AWS_VIP: &str = "[vip]\nmode = \"aws\"\naddress = \"10.0.1.100/24\"\ninterface = \"eth0\"\n";
    let ok = Config::from_toml(&cluster(AWS_VIP)).unwrap();
    assert_eq!((ok.vip.aws.method, ok.aws.call_timeout.get()), (AwsVipMethod::SecondaryIp, Duration::from_secs(5)));
    let eip = Config::from_toml(&cluster(
        "[vip]\nmode = \"aws\"\naddress = \"203.0.113.7\"\n[vip.aws]\nmethod = \"elastic-ip\"\n",
    ))
    .unwrap();
    assert!(!eip.vip.needs_local_address(), "an Elastic IP needs no interface");
    let ebs = "[volume]\nmode = \"aws-ebs\"\nvolume_id = \"vol-0abc\"\ndevice = \"/dev/sdf\"\nmount_point = \"/pbx\"\n";
    assert_eq!(Config::from_toml(&cluster(ebs)).unwrap().volume.mode, VolumeMode::AwsEbs);
    let cases: &[(&str, &str)] = &[
        ("[vip]\nmode = \"aws\"\naddress = \"10.0.1.100/24\"", "vip.interface: is required"),
        (&format!("{AWS_VIP}[vip.aws]\nmethod = \"route-table\""), "vip.aws.route_tables: list the route tables"),
        (&format!("{AWS_VIP}[vip.aws]\nmethod = \"route-table\"\nroute_tables = [\"x\"]"), "vip.aws.route_tables[0]"),
        (&format!("{AWS_VIP}[vip.aws]\nmethod = \"anycast\""), "unknown variant `anycast`"),
        (&format!("{AWS_VIP}[vip.aws]\nallocation_id = \"eip-1\""), "vip.aws.allocation_id"),
        ("[aws]\nregion = \"EU West\"", "aws.region"),
        ("[aws]\ninstance_id = \"0123\"", "aws.instance_id: `0123` is not an id like \"i-0123abcd\""),
        ("[aws]\nendpoint_url = \"ec2.local\"", "aws.endpoint_url"),
        ("[aws]\ncall_timeout = \"10s\"\ncall_budget = \"1s\"", "aws.call_budget"),
        ("[aws]\nretries = 3", "unknown field `retries`"),
        ("[volume]\nmode = \"local\"\ndevice = \"/dev/sdb\"", "volume.mount_point: is required"),
        ("[volume]\nmode = \"local\"\nmount_point = \"/pbx\"", "volume.device: is required"),
        ("[volume]\nmode = \"local\"\ndevice = \"sdb\"\nmount_point = \"/pbx\"", "volume.device: `sdb`"),
        ("[volume]\nmode = \"local\"\ndevice = \"/dev/sdb\"\nmount_point = \"/\"", "volume.mount_point"),
        (
            "[volume]\nmode = \"aws-ebs\"\ndevice = \"/dev/sdf\"\nmount_point = \"/pbx\"",
            "volume.volume_id: is required",
        ),
        (&ebs.replace("vol-0abc", "0abc"), "volume.volume_id: `0abc`"),
        (&ebs.replace("aws-ebs", "local"), "volume.volume_id: applies to mode \"aws-ebs\" only"),
        (&format!("{ebs}on_acquire = \" \""), "volume.on_acquire: is empty"),
        (&format!("{ebs}hook_timeout = \"1ms\""), "volume.hook_timeout"),
        (&format!("{ebs}mount = true"), "unknown field `mount`"),
        ("[volume]\nmode = \"nfs\"", "unknown variant `nfs`"),
    ];
    for (extra, want) in cases {
        let e = err(&cluster(extra));
        assert!(e.contains(want), "{extra:?}: got {e:?}, want {want:?}");
    }
    let e = err(&format!("{MINIMAL}{ebs}"));
    assert!(e.contains("volume.mode: a volume moves between cluster nodes"), "{e}");
    let e = err(&cluster("").replace("name = \"pbx\"", "name = \"pbx\"\nnode = 7"));
    assert!(e.contains("backend[0].node: 7 is not in cluster.peers"), "{e}");
}

fn err(text: &str) -> String {
    Config::from_toml(text).expect_err("must be rejected").to_string()
}

#[test]
fn every_shipped_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // The cluster examples name /etc/sipfront/cluster.key; point them at a test secret instead.
            let text = std::fs::read_to_string(&p).unwrap().replace("/etc/sipfront/cluster.key", &secret_file());
            if !cfg!(feature = "aws") && text.contains("mode = \"aws") {
                continue; // refused by design without the feature (its own test checks the message)
            }
            Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "config/ holds the examples");
}

#[test]
fn defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.routing.policy, Policy::ActiveStandby);
    assert_eq!(c.timers.t1.get(), Duration::from_millis(500));
    assert_eq!(c.timers.t1x64(), Duration::from_secs(32));
    assert_eq!(c.sip.max_forwards, 70);
    let limits = c.sip.stream_limits();
    assert_eq!((limits.max_connections, limits.max_per_source), (10_000, 256));
    assert_eq!((limits.idle, limits.message_timeout), (Duration::from_secs(300), Duration::from_secs(10)));
    let ws = c.websocket.settings(Duration::from_secs(5));
    assert_eq!(ws.ping_interval, Some(Duration::from_secs(30)));
    let off = Config::from_toml(&MINIMAL.replace("[[backend]]", "[websocket]\nping_interval = \"0s\"\n[[backend]]"));
    assert_eq!(off.unwrap().websocket.settings(Duration::from_secs(5)).ping_interval, None, "0s: no pings");
    let t = c.backends[0].target().unwrap();
    assert_eq!((t.addr, t.transport), ("127.0.0.1:5080".parse().unwrap(), Transport::Udp));
    assert!(c.summary().starts_with("ok: node 1 (a)"));
}

#[test]
fn websocket_listeners_and_keys() {
    let text = MINIMAL.replace("\"udp:127.0.0.1:5060\", ", "\"udp:127.0.0.1:5060\", \"ws:127.0.0.1:8080\", ").replace(
        "[[backend]]",
        "[websocket]\nallowed_origins = [\"https://app.example.com\"]\nmax_frame_size = 4096\n[[backend]]",
    );
    let c = Config::from_toml(&text).unwrap();
    assert!(c.sip.listen.iter().any(|l| l.transport == Transport::Ws && l.addr.port() == 8080));
    assert_eq!(c.websocket.allowed_origins, ["https://app.example.com"]);
    assert_eq!(c.websocket.max_frame_size, 4096);
    assert_eq!(Config::from_toml(MINIMAL).unwrap().websocket.max_frame_size, 65_535);
}

#[test]
fn stray_keys_are_rejected_with_their_name() {
    let e = err(&MINIMAL.replace("[sip]", "[sip]\nlisten_port = 5"));
    assert!(e.contains("unknown field `listen_port`"), "{e}");
    let e = err(&format!("{MINIMAL}\n[bogus]\nx = 1\n"));
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn bad_values_name_the_key_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("id = 1", "id = 0", "node.id: 0 is out of range"),
        ("id = 1", "id = 256", "node.id"),
        ("\"udp:127.0.0.1:5060\", ", "\"sctp:127.0.0.1:5060\", ", "unknown transport `sctp`"),
        ("\"udp:127.0.0.1:5060\", ", "\"udp:127.0.0.1\", ", "is not IP:PORT"),
        ("\"udp:127.0.0.1:5060\", ", "\"wss:127.0.0.1:5060\", ", "tls.cert_file: a tls: or wss: listener needs"),
        ("\"udp:127.0.0.1:5060\", ", "\"tls:127.0.0.1:5061\", ", "tls.cert_file: a tls: or wss: listener needs"),
        ("[[backend]]", "[websocket]\nmax_frame_size = 10\n[[backend]]", "websocket.max_frame_size"),
        (
            "[[backend]]",
            "[websocket]\nallowed_origins = [\"app.example.com\"]\n[[backend]]",
            "websocket.allowed_origins",
        ),
        ("[[backend]]", "[websocket]\norigins = []\n[[backend]]", "unknown field `origins`"),
        ("[[backend]]", "[websocket]\nping_interval = \"10ms\"\n[[backend]]", "websocket.ping_interval: must be"),
        ("advertise = \"127.0.0.1\"", "advertise = \"127.0.0.1\"\nmax_connections = 0", "sip.max_connections: must be"),
        (
            "advertise = \"127.0.0.1\"",
            "advertise = \"127.0.0.1\"\nmax_connections_per_source = 0",
            "sip.max_connections_per_source: must be at least 1",
        ),
        (
            "advertise = \"127.0.0.1\"",
            "advertise = \"127.0.0.1\"\nmax_connections = 100\nmax_connections_per_source = 101",
            "sip.max_connections_per_source: 101 is above sip.max_connections (100)",
        ),
        ("advertise = \"127.0.0.1\"", "advertise = \"127.0.0.1\"\nmessage_timeout = \"5ms\"", "sip.message_timeout"),
        ("uri = \"sip:127.0.0.1:5080\"", "uri = \"sips:127.0.0.1:5080\"", "write sip:...;transport=tls"),
        ("[[backend]]", "[tls]\nkey_file = \"/k.pem\"\n[[backend]]", "tls.cert_file: is missing"),
        ("[[backend]]", "[tls]\nhandshake_timeout = \"1ms\"\n[[backend]]", "tls.handshake_timeout"),
        ("advertise = \"127.0.0.1\"", "advertise = \"127.0.0.1:5060\"", "sip.advertise"),
        ("advertise = \"127.0.0.1\"", "advertise = \"a b\"", "sip.advertise"),
        ("uri = \"sip:127.0.0.1:5080\"", "uri = \"sip:pbx.example.com\"", "backend[0].uri: `sip:pbx.example.com`"),
        ("uri = \"sip:127.0.0.1:5080\"", "uri = \"http://x\"", "backend[0].uri"),
        ("uri = \"sip:127.0.0.1:5080\"", "uri = \"sip:127.0.0.1;transport=sctp\"", "transport `sctp`"),
        ("name = \"pbx\"", "name = \"pbx\"\nweight = 0", "backend[0].weight"),
        ("[[backend]]", "[timers]\nt1 = \"500\"\n[[backend]]", "no unit"),
        ("[[backend]]", "[timers]\nt1 = \"1s\"\nt2 = \"500ms\"\n[[backend]]", "timers.t2"),
        ("[[backend]]", "[routing]\npolicy = \"random\"\n[[backend]]", "unknown variant `random`"),
        (
            "[[backend]]",
            "[routing]\nrelay_allow = [\"10.0.0.0/40\"]\n[[backend]]",
            "routing.relay_allow[0]: `10.0.0.0/40`: prefix over 32",
        ),
        (
            "[[backend]]",
            "[routing]\nrelay_allow = [\"a b\"]\n[[backend]]",
            "routing.relay_allow[0]: `a b` is neither an address block nor a host name",
        ),
        ("advertise = \"127.0.0.1\"", "advertise = \"127.0.0.1\"\nmax_transactions = 0", "sip.max_transactions: must"),
        (
            "advertise = \"127.0.0.1\"",
            "advertise = \"127.0.0.1\"\nmax_transactions_per_source = 0",
            "sip.max_transactions_per_source: must be at least 1",
        ),
        ("[[backend]]", "[dialogs]\nmax_per_source = 0\n[[backend]]", "dialogs.max_per_source: must be at least 1"),
        ("[[backend]]", "[dialogs]\nack_timeout = \"0s\"\n[[backend]]", "dialogs.ack_timeout: must be above zero"),
    ];
    for (from, to, want) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        let e = err(&MINIMAL.replacen(from, to, 1));
        assert!(e.contains(want), "{to:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn cross_field_rules() {
    let two = format!("{MINIMAL}\n[[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5082\"\n");
    assert!(err(&two).contains("backend[1].name: `pbx` is used by two backends"));
    let dup = format!("{MINIMAL}\n[[backend]]\nname = \"b\"\nuri = \"sip:127.0.0.1:5080\"\n");
    assert!(err(&dup).contains("backend[1].uri"));
    let no_tcp = MINIMAL.replace(", \"tcp:127.0.0.1:5060\"", "").replace(":5080\"", ":5080;transport=tcp\"");
    assert!(err(&no_tcp).contains("no TCP listener"));
    let no_tls = MINIMAL.replace(":5080\"", ":5080;transport=tls\"");
    assert!(err(&no_tls).contains("uses TLS but sip.listen has no TLS listener"), "{}", err(&no_tls));
    let none = MINIMAL.split("[[backend]]").next().unwrap().to_string();
    assert!(err(&none).contains("at least one [[backend]]"));
}
