//! The agent against an HTTPS update server whose certificate comes from a private CA made by
//! the test (docs/agent-tls.md): `updates.tls.ca_cert`, mutual TLS with
//! `client_cert`/`client_key` and the server's `TLS_CLIENT_CA`, and every failure in plain
//! words naming the setting to change, with its exit code. The real `qx-update` binary, a
//! real `qx-update-server` on loopback, a sandboxed host.

use std::path::PathBuf;
use std::process::Output;

use qx_agent::code;
use qx_testkit::host::{HostConfig, TestHost};
use qx_testkit::release::{FixtureKey, ReleaseSpec};
use qx_testkit::server::TestServer;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::support::host::{node, run_qx_update};

/// A private certificate authority.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, mut p: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 (expired in 2021 when `expired`).
    fn server(&self, expired: bool) -> Issued {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "updates.test");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(p)
    }

    fn client(&self) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "host-1");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }
}

/// An HTTPS update server holding one signed release, and a host configured for it.
struct TlsLab {
    server: TestServer,
    host: TestHost,
    key: FixtureKey,
    _dir: tempfile::TempDir,
}

impl TlsLab {
    /// `server_cert` served; with `client_ca`, client certificates are required.
    fn start(server_cert: &Issued, client_ca: Option<&Ca>) -> TlsLab {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        let key = FixtureKey::generate().unwrap();
        // Publish over plain HTTP first (the publisher is not what is tested here), then
        // serve the same release tree over HTTPS.
        {
            let plain = TestServer::start(&releases, "t").unwrap();
            ReleaseSpec::new("quantix-os", "dev", "1.1.0")
                .component(node("1.1.0"))
                .sign(&key)
                .unwrap()
                .publish(plain.url(), "t")
                .unwrap();
        }
        let write = |name: &str, text: &str| -> PathBuf {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let mut config = qx_server::Config::new(&releases);
        config.tls = Some(qx_server::config::TlsFiles {
            cert: write("server.crt", &server_cert.cert),
            key: write("server.key", &server_cert.key),
        });
        config.tls_client_ca = client_ca.map(|ca| write("client-ca.pem", &ca.pem()));
        let server = TestServer::start_with(config).unwrap();
        assert!(server.url().starts_with("https://"), "{}", server.url());
        TlsLab {
            server,
            host: TestHost::new().unwrap(),
            key,
            _dir: dir,
        }
    }

    /// Writes `files` on the host and the configuration with `tls` (the YAML of the
    /// `updates.tls` value, or none).
    fn configure(&self, files: &[(&str, &str)], tls: Option<&str>) {
        for (path, text) in files {
            self.host.write_file(path, text.as_bytes(), 0o600).unwrap();
        }
        let mut c = HostConfig::new(
            self.server.url(),
            "quantix-os",
            "dev",
            &self.key.public_key_file,
        );
        if let Some(t) = tls {
            c.extra = format!("  tls: {t}\n");
        }
        self.host.write_config(&c).unwrap();
    }

    fn check(&self) -> Output {
        run_qx_update(self.host.root(), &["check"])
    }
}

const CA_PATH: &str = "/etc/limiquantix/update-ca.pem";
const WITH_CA: &str = "{ca_cert: /etc/limiquantix/update-ca.pem}";
const WITH_MTLS: &str = "{ca_cert: /etc/limiquantix/update-ca.pem, client_cert: /etc/limiquantix/client.crt, client_key: /etc/limiquantix/client.key}";

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(code::SUCCESS), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1.1.0"),
        "{}",
        text(out)
    );
}

/// Exit `code` and a message on stderr containing every one of `words`.
fn assert_refused(out: &Output, code: i32, words: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in words {
        assert!(stderr.contains(w), "missing {w:?}: {}", text(out));
    }
}

const UNKNOWN_ISSUER: &str = "the server's certificate is not signed by a trusted CA; set updates.tls.ca_cert to your CA's PEM file";

#[test]
fn check_succeeds_with_the_private_ca_as_ca_cert() {
    let ca = Ca::new("Quantix Test CA");
    let lab = TlsLab::start(&ca.server(false), None);
    lab.configure(&[(CA_PATH, &ca.pem())], Some(WITH_CA));
    assert_ok(&lab.check());
}

#[test]
fn check_without_ca_cert_names_the_setting() {
    let ca = Ca::new("Quantix Test CA");
    let lab = TlsLab::start(&ca.server(false), None);
    lab.configure(&[], None);
    assert_refused(&lab.check(), code::TLS, &[UNKNOWN_ISSUER]);
}

#[test]
fn check_with_a_wrong_ca_names_the_setting() {
    let ca = Ca::new("Quantix Test CA");
    let other = Ca::new("Some Other CA");
    let lab = TlsLab::start(&ca.server(false), None);
    lab.configure(&[(CA_PATH, &other.pem())], Some(WITH_CA));
    assert_refused(&lab.check(), code::TLS, &[UNKNOWN_ISSUER]);
}

#[test]
fn check_against_an_expired_server_certificate_says_expired() {
    let ca = Ca::new("Quantix Test CA");
    let lab = TlsLab::start(&ca.server(true), None);
    lab.configure(&[(CA_PATH, &ca.pem())], Some(WITH_CA));
    assert_refused(
        &lab.check(),
        code::TLS,
        &["the server's certificate has expired"],
    );
}

#[test]
fn check_without_a_client_certificate_when_the_server_requires_one() {
    let ca = Ca::new("Quantix Test CA");
    let lab = TlsLab::start(&ca.server(false), Some(&ca));
    lab.configure(&[(CA_PATH, &ca.pem())], Some(WITH_CA));
    assert_refused(
        &lab.check(),
        code::TLS,
        &["requires a client certificate; set updates.tls.client_cert and client_key"],
    );
}

#[test]
fn check_succeeds_with_mutual_tls() {
    let ca = Ca::new("Quantix Test CA");
    let lab = TlsLab::start(&ca.server(false), Some(&ca));
    let client = ca.client();
    lab.configure(
        &[
            (CA_PATH, &ca.pem()),
            ("/etc/limiquantix/client.crt", &client.cert),
            ("/etc/limiquantix/client.key", &client.key),
        ],
        Some(WITH_MTLS),
    );
    assert_ok(&lab.check());
}

#[test]
fn check_with_a_client_certificate_of_another_ca_is_refused() {
    let ca = Ca::new("Quantix Test CA");
    let rogue = Ca::new("Rogue CA").client();
    let lab = TlsLab::start(&ca.server(false), Some(&ca));
    lab.configure(
        &[
            (CA_PATH, &ca.pem()),
            ("/etc/limiquantix/client.crt", &rogue.cert),
            ("/etc/limiquantix/client.key", &rogue.key),
        ],
        Some(WITH_MTLS),
    );
    assert_refused(
        &lab.check(),
        code::TLS,
        &["refused this host's client certificate (updates.tls.client_cert)"],
    );
}

/// (case, host files (path, text), the `updates.tls` value, words the error must contain).
type BadTlsRow<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

/// Configuration errors of `updates.tls`, found when the configuration is loaded: exit 3, the
/// key and the file named. One named row per case.
#[test]
fn bad_tls_settings_are_configuration_errors() {
    let ca = Ca::new("Quantix Test CA");
    let client = ca.client();
    let lab = TlsLab::start(&ca.server(false), None);
    let rows: &[BadTlsRow] = &[
        (
            "unreadable ca_cert",
            &[],
            "{ca_cert: /etc/limiquantix/missing.pem}",
            &["updates.tls.ca_cert", "/etc/limiquantix/missing.pem"],
        ),
        (
            "ca_cert without a certificate",
            &[(CA_PATH, "not a certificate\n")],
            WITH_CA,
            &["updates.tls.ca_cert", "update-ca.pem", "no PEM certificate"],
        ),
        (
            "ca_cert with broken PEM",
            &[(
                CA_PATH,
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            )],
            WITH_CA,
            &["updates.tls.ca_cert", "update-ca.pem"],
        ),
        (
            "client_cert without client_key",
            &[("/etc/limiquantix/client.crt", &client.cert)],
            "{client_cert: /etc/limiquantix/client.crt}",
            &["updates.tls.client_key", "is missing"],
        ),
        (
            "client_key without client_cert",
            &[("/etc/limiquantix/client.key", &client.key)],
            "{client_key: /etc/limiquantix/client.key}",
            &["updates.tls.client_cert", "is missing"],
        ),
        (
            "client_key that is no key",
            &[
                ("/etc/limiquantix/client.crt", &client.cert),
                ("/etc/limiquantix/client.key", &client.cert),
            ],
            "{client_cert: /etc/limiquantix/client.crt, client_key: /etc/limiquantix/client.key}",
            &["updates.tls.client_key", "client.key"],
        ),
        (
            "unknown key in tls",
            &[],
            "{ca_certs: /etc/limiquantix/update-ca.pem}",
            &["ca_certs"],
        ),
    ];
    for (name, files, tls, words) in rows {
        lab.configure(files, Some(tls));
        let out = lab.check();
        assert_eq!(
            out.status.code(),
            Some(code::CONFIG),
            "{name}: {}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for w in *words {
            assert!(stderr.contains(w), "{name}: missing {w:?}: {}", text(&out));
        }
    }
}

#[test]
fn https_to_a_plain_http_port_says_plain_http_in_plain_words() {
    let lab = qx_testkit::host::Lab::new().expect("lab");
    let mut c = lab.host_config();
    c.server_url = lab.server.url().replacen("http://", "https://", 1);
    lab.host.write_config(&c).expect("write node.yaml");
    let out = run_qx_update(lab.host.root(), &["check"]);
    assert_refused(
        &out,
        code::TLS,
        &["the server answered in plain HTTP, not TLS", "use http://"],
    );
}

#[test]
fn plain_http_to_a_tls_port_says_use_https_and_is_not_retried() {
    let ca = Ca::new("Private Test CA");
    let lab = TlsLab::start(&ca.server(false), None);
    let mut c = HostConfig::new(
        &lab.server.url().replacen("https://", "http://", 1),
        "quantix-os",
        "dev",
        &lab.key.public_key_file,
    );
    c.extra = String::new();
    lab.host.write_config(&c).expect("write node.yaml");
    let out = lab.check();
    assert_refused(
        &out,
        code::FETCH,
        &[
            "the server's answer is not HTTP",
            "updates.server_url must start with https://",
        ],
    );
    assert!(!text(&out).contains("retrying"), "{}", text(&out));
}
