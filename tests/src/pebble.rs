//! A real ACME CA on loopback for the journeys: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every name resolves to 127.0.0.1 unless a test says
//! otherwise), installed by `scripts/setup/70-acme.sh`. Each test starts its own pair on
//! free ports, with pebble's validation ports pointed at its server's ingress.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running pebble and its DNS; both stop when dropped.
pub struct Pebble {
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// The root pebble's own HTTPS (its API) is signed by: `[tls] acme_ca_file`.
    pub api_ca: PathBuf,
    management_port: u16,
    dns_management_port: u16,
    children: Vec<Child>,
}

fn program(env: &str, name: &str) -> String {
    match std::env::var(env) {
        Ok(path) => path,
        Err(_) if Path::new("/usr/bin").join(name).exists() => format!("/usr/bin/{name}"),
        Err(_) => panic!("{name} is not installed: run scripts/setup/70-acme.sh (scripts/test.sh does)"),
    }
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity` (pebble's default, 5 years,
    /// when `None`).
    pub fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::tempdir().expect("pebble temp dir");
        // Pebble's API is HTTPS only: a CA of the test's, and a leaf for 127.0.0.1.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pebble api test ca");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("ca key")).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        let api_ca = dir.path().join("api-ca.pem");
        std::fs::write(&api_ca, ca.pem()).expect("write ca");
        std::fs::write(dir.path().join("api.pem"), leaf.pem()).expect("write leaf");
        std::fs::write(dir.path().join("api.key"), leaf_key.serialize_pem()).expect("write key");

        let (acme_port, management_port, dns_port, dns_management_port) =
            (free_port(), free_port(), free_port(), free_port());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = validity {
            pebble["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).expect("write config");

        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let dns = Command::new(program("PAASTECH_CHALLTESTSRV", "pebble-challtestsrv"))
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("starting pebble-challtestsrv");
        let ca_process = Command::new(program("PAASTECH_PEBBLE", "pebble"))
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random waits before validating, no nonces refused on purpose, and every
            // order validated anew: what is tested is this server, not pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("starting pebble");
        let directory = format!("https://127.0.0.1:{acme_port}/dir");
        let pebble =
            Pebble { dir, directory, api_ca, management_port, dns_management_port, children: vec![dns, ca_process] };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pebble.curl(&[&pebble.directory]).status.success() {
            assert!(Instant::now() < deadline, "pebble did not start:\n{}", pebble.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.api_ca)
            .args(args)
            .output()
            .expect("running curl")
    }

    /// The root pebble issues certificates under (made anew at each start): what clients
    /// of the apps trust.
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.path().join("issuing-root.pem");
        if !path.exists() {
            let out = self.curl(&[&format!("https://127.0.0.1:{}/roots/0", self.management_port)]);
            assert!(out.status.success(), "cannot fetch pebble's root: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(&path, &out.stdout).expect("write root");
        }
        path
    }

    /// Makes `host` resolve to `address` (only) for pebble's validations.
    pub fn resolve(&self, host: &str, address: &str) {
        let host = format!("{host}.");
        let calls = [
            ("clear-a", serde_json::json!({ "host": host })),
            ("add-a", serde_json::json!({ "host": host, "addresses": [address] })),
        ];
        for (call, body) in calls {
            let out = Command::new("curl")
                .args(["-sS", "--fail", "--max-time", "10", "-X", "POST", "-d", &body.to_string()])
                .arg(format!("http://127.0.0.1:{}/{call}", self.dns_management_port))
                .output()
                .expect("running curl");
            assert!(out.status.success(), "challtestsrv refused {call}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// How many certificates pebble has issued so far.
    pub fn issued(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("pebble.log"))
            .unwrap_or_default()
            .matches("Issued certificate serial")
            .count()
    }

    /// Pebble's own log, for assertion messages.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `curl` over HTTPS to `https://HOST:PORT{path}` on 127.0.0.1 (by `--resolve`, so SNI and
/// the certificate check use HOST), trusting only `root`. `http2`: HTTP/2 only. Returns
/// (success, the HTTP version and status as `VERSION STATUS`, the body or curl's error).
pub fn curl_https(root: &Path, host: &str, port: u16, path: &str, http2: bool) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').map(|(b, s)| (b.to_owned(), s.to_owned())).unwrap_or_default();
    if out.status.success() {
        (true, status, body)
    } else {
        (false, status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
