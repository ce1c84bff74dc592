//! Harness for the AWS failover tests (testing tier 5 in DESIGN.md): the `moto` EC2 emulator behind our
//! fault-injecting proxy (`tests/aws/emulator.py`, one Python process on ephemeral ports of 127.0.0.1, or of
//! an address inside a lab namespace), killed on drop; a real `aws-sdk-ec2` client for building the world
//! (a VPC, a subnet, three instances, a volume, an Elastic IP, a route table) and for checking who owns what.
//! Use it as `mod aws; use aws::*;`.
//!
//! The emulator needs `python3` with `moto[server]` 5.2.5 (the README's test command installs it); a missing
//! one fails the test with the install command, it is never skipped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, VolumeAttachmentState};

/// The emulator process and its two URLs.
pub struct Emulator {
    child: Child,
    /// The network namespace it runs in, if not the test's own: control calls and [`Emulator::block`] enter it.
    ns: Option<String>,
    /// The fault-injecting proxy: what sipfront and the test's SDK client talk to.
    pub ec2: String,
    /// moto itself (no faults).
    pub moto: String,
    /// Its stderr: one line per proxied call; printed when a test fails, removed otherwise.
    pub log_path: PathBuf,
}

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/emulator.py")
}

impl Emulator {
    /// Start on 127.0.0.1.
    pub fn start() -> Emulator {
        Emulator::start_with(Command::new("python3"), "127.0.0.1", None)
    }

    /// Start inside network namespace `ns` on `host` (an address of that namespace), bounded to 300 s.
    pub fn start_in(ns: &str, host: &str) -> Emulator {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "timeout", "-s", "KILL", "300", "python3"]);
        Emulator::start_with(cmd, host, Some(ns.to_owned()))
    }

    fn start_with(mut cmd: Command, host: &str, ns: Option<String>) -> Emulator {
        use std::os::unix::process::CommandExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = std::env::temp_dir().join(format!("sipfront-emulator-{}-{n}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("emulator log file");
        // Its own process group: drop kills `timeout` and Python together.
        cmd.process_group(0);
        cmd.arg(script())
            .args(["--host", host])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("log file")));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start python3 {}: {e}", script().display()));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let n = reader.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "the EC2 emulator did not start (is moto installed? `pip install 'moto[server]==5.2.5' flask \
                 flask-cors`); its stderr:\n{text}"
            );
        }
        let field = |k: &str| -> String {
            let at = line.find(&format!("\"{k}\"")).unwrap_or_else(|| panic!("no {k} in {line}"));
            let rest = &line[at + k.len() + 2..];
            let start = rest.find('"').expect("value") + 1;
            let end = rest[start..].find('"').expect("end") + start;
            rest[start..end].to_owned()
        };
        let (ec2, moto) = (field("ec2"), field("moto"));
        // Keep draining stdout so the emulator never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        Emulator { child, ns, ec2, moto, log_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// POST a JSON body to a control path of the proxy; the answer's body.
    pub fn control(&self, method: &str, path: &str, body: &str) -> String {
        let (m, base, p, b) = (method.to_owned(), self.ec2.clone(), path.to_owned(), body.to_owned());
        self.in_ns(move || http(&m, &base, &p, &b))
    }

    /// Run `f` on a thread inside the emulator's namespace (or here).
    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let Some(ns) = self.ns.clone() else { return f() };
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            // SAFETY: a valid namespace fd; setns moves only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the emulator's namespace")
    }

    /// Run an SDK conversation on a thread in the emulator's namespace, with a runtime of its own (the
    /// client's connections are made from that thread, so they start in that namespace).
    pub fn block<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(aws_sdk_ec2::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let url = self.ec2.clone();
        self.in_ns(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move { f(client_for(&url)).await })
        })
    }

    pub fn faults(&self, rules_json: &str) {
        self.control("POST", "/_emu/faults", &format!("{{\"rules\": {rules_json}}}"));
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "/_emu/faults", "");
    }

    pub fn realism(&self, json: &str) {
        self.control("POST", "/_emu/realism", json);
    }

    pub fn pause(&self) {
        self.control("POST", "/_emu/pause", "");
    }

    pub fn resume(&self) {
        self.control("POST", "/_emu/resume", "");
    }

    /// The proxied calls so far, as JSON text.
    pub fn calls(&self) -> String {
        self.control("GET", "/_emu/calls", "")
    }

    pub fn clear_calls(&self) {
        self.control("DELETE", "/_emu/calls", "");
    }

    /// How many proxied calls of `action` the log holds.
    pub fn count(&self, action: &str) -> usize {
        self.calls().matches(&format!("\"action\": \"{action}\"")).count()
    }

    /// The test's own SDK client (no retries, static test credentials).
    pub async fn client(&self) -> aws_sdk_ec2::Client {
        client_for(&self.ec2)
    }
}

fn client_for(url: &str) -> aws_sdk_ec2::Client {
    test_env();
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // The whole group; SIGCONT first in case a test stopped it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-CONT", "--", &group]).stderr(Stdio::null()).status();
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- EC2 emulator log (last 60 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// What sipfront's own client reads from the standard chain, and no instance metadata lookups.
pub fn test_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::remove_var("AWS_PROFILE");
}

/// A minimal HTTP/1.1 exchange (Connection: close) for the control API.
fn http(method: &str, base: &str, path: &str, body: &str) -> String {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).unwrap_or_else(|e| panic!("emulator control {hostport}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.") && out[9..12].starts_with('2'), "control {method} {path}: {out}");
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// Three instances in one subnet, their ENIs, a volume, an Elastic IP and a route table.
#[derive(Debug, Clone)]
pub struct World {
    pub vpc: String,
    pub subnet: String,
    pub instances: Vec<String>,
    pub enis: Vec<String>,
    pub volume: String,
    pub eip: String,
    pub allocation: String,
    pub route_table: String,
}

impl World {
    /// VPC 10.N.0.0/16, subnet 10.N.1.0/24.
    pub async fn build(c: &aws_sdk_ec2::Client, n: u8) -> World {
        World::build_in(c, &format!("10.{n}.0.0/16"), &format!("10.{n}.1.0/24")).await
    }

    pub async fn build_in(c: &aws_sdk_ec2::Client, vpc_cidr: &str, subnet_cidr: &str) -> World {
        let vpc = c.create_vpc().cidr_block(vpc_cidr).send().await.unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
        let subnet = c
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(subnet_cidr)
            .availability_zone("us-east-1a")
            .send()
            .await
            .unwrap();
        let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
        let run = c
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(3)
            .max_count(3)
            .subnet_id(&subnet)
            .send()
            .await
            .unwrap();
        let mut instances = Vec::new();
        let mut enis = Vec::new();
        for i in run.instances() {
            instances.push(i.instance_id().unwrap().to_owned());
            enis.push(i.network_interfaces()[0].network_interface_id().unwrap().to_owned());
        }
        let vol = c.create_volume().size(1).availability_zone("us-east-1a").send().await.unwrap();
        let volume = vol.volume_id().unwrap().to_owned();
        let eip = c.allocate_address().domain(aws_sdk_ec2::types::DomainType::Vpc).send().await.unwrap();
        let (eip, allocation) = (eip.public_ip().unwrap().to_owned(), eip.allocation_id().unwrap().to_owned());
        let rtb = c.create_route_table().vpc_id(&vpc).send().await.unwrap();
        let route_table = rtb.route_table().unwrap().route_table_id().unwrap().to_owned();
        World { vpc, subnet, instances, enis, volume, eip, allocation, route_table }
    }

    /// The ENIs listing `ip` among their private addresses.
    pub async fn secondary_holders(&self, c: &aws_sdk_ec2::Client, ip: &str) -> Vec<String> {
        let out = c
            .describe_network_interfaces()
            .filters(Filter::builder().name("subnet-id").values(&self.subnet).build())
            .send()
            .await
            .unwrap();
        out.network_interfaces()
            .iter()
            .filter(|n| n.private_ip_addresses().iter().any(|a| a.private_ip_address() == Some(ip)))
            .map(|n| n.network_interface_id().unwrap().to_owned())
            .collect()
    }

    /// The ENI the Elastic IP is associated with.
    pub async fn eip_holder(&self, c: &aws_sdk_ec2::Client) -> Option<String> {
        let out = c.describe_addresses().allocation_ids(&self.allocation).send().await.unwrap();
        out.addresses()[0].network_interface_id().map(str::to_owned)
    }

    /// The ENI the route to `cidr` points at.
    pub async fn route_target(&self, c: &aws_sdk_ec2::Client, cidr: &str) -> Option<String> {
        let out = c.describe_route_tables().route_table_ids(&self.route_table).send().await.unwrap();
        out.route_tables()[0]
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some(cidr))
            .and_then(|r| r.network_interface_id().map(str::to_owned))
    }

    /// The volume's live attachments: (instance, state).
    pub async fn attachments(&self, c: &aws_sdk_ec2::Client) -> Vec<(String, VolumeAttachmentState)> {
        let out = c.describe_volumes().volume_ids(&self.volume).send().await.unwrap();
        out.volumes()[0]
            .attachments()
            .iter()
            .filter(|a| a.state() != Some(&VolumeAttachmentState::Detached))
            .map(|a| (a.instance_id().unwrap().to_owned(), a.state().unwrap().clone()))
            .collect()
    }

    /// The `sipfront:owner` tag of a resource.
    pub async fn owner_tag(&self, c: &aws_sdk_ec2::Client, resource: &str, key: &str) -> Option<String> {
        let out = c
            .describe_tags()
            .filters(Filter::builder().name("resource-id").values(resource).build())
            .filters(Filter::builder().name("key").values(key).build())
            .send()
            .await
            .unwrap();
        out.tags().first().and_then(|t| t.value().map(str::to_owned))
    }
}
