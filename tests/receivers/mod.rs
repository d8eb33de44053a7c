//! Real receivers on loopback for the notification tests: a small HTTP/1.1 server that records
//! every request and answers as a test scripts it, an SMTP server (Debian's `python3-aiosmtpd`,
//! its command line or `smtp_receiver.py` beside this file), and a certificate authority made
//! with `openssl` for their TLS.
#![allow(dead_code)] // each test uses a different part of this module

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::http::free_port;

/// The Python that Debian's `python3-aiosmtpd` installs into (a `python3` earlier on PATH, such
/// as pyenv's, does not have it).
pub const PYTHON: &str = "/usr/bin/python3";

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {:?}",
                self.method,
                self.target,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An answer the server gives.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Waits this long before answering (a receiver that hangs).
    pub delay: Duration,
    /// Announces a longer body than it sends, then closes the connection: the answer breaks off
    /// after the status line and headers (as a TLS peer that closes without close_notify).
    pub cut_off: bool,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
            cut_off: false,
        }
    }

    pub fn cut_off(status: u16, body: &str) -> Reply {
        Reply {
            cut_off: true,
            ..Reply::status(status, body)
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200, "ok")
    }

    pub fn hang(delay: Duration) -> Reply {
        Reply { delay, ..Reply::ok() }
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// One-shot answers by path prefix, used before the standing ones.
    scripted: HashMap<String, VecDeque<Reply>>,
    /// Standing answers by path prefix.
    standing: HashMap<String, Reply>,
}

impl State {
    fn reply_for(&mut self, path: &str) -> Reply {
        let longest = |keys: Vec<&String>| {
            keys.into_iter()
                .filter(|p| path.starts_with(p.as_str()))
                .max_by_key(|p| p.len())
                .cloned()
        };
        let scripted_keys: Vec<&String> = self
            .scripted
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| k)
            .collect();
        if let Some(prefix) = longest(scripted_keys)
            && let Some(reply) = self.scripted.get_mut(&prefix).and_then(VecDeque::pop_front)
        {
            return reply;
        }
        longest(self.standing.keys().collect())
            .and_then(|p| self.standing.get(&p).cloned())
            .unwrap_or_else(Reply::ok)
    }
}

/// An HTTP/1.1 server on a loopback port, one thread per connection, keep-alive honoured; over
/// TLS with a certificate for 127.0.0.1 when started with [`HttpReceiver::start_tls`]. Answers
/// 200 "ok" unless told otherwise.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tls: bool,
}

impl HttpReceiver {
    pub fn start() -> HttpReceiver {
        HttpReceiver::spawn(None)
    }

    /// The receiver over TLS, with `ca`'s certificate for 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> HttpReceiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_file(&ca.cert_pem).expect("the server certificate reads")];
        let key = PrivateKeyDer::from_pem_file(&ca.key_pem).expect("the server key reads");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("a server configuration");
        HttpReceiver::spawn(Some(Arc::new(config)))
    }

    fn spawn(tls: Option<Arc<rustls::ServerConfig>>) -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let secure = tls.is_some();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve(stream, &state),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(connection, stream), &state);
                    }
                });
            }
        });
        HttpReceiver {
            addr,
            state,
            tls: secure,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS), without a trailing slash.
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Answers requests whose path starts with `prefix` with `reply` from now on.
    pub fn respond(&self, prefix: &str, reply: Reply) {
        self.lock().standing.insert(prefix.to_owned(), reply);
    }

    /// Answers the next requests under `prefix` with `replies`, in order, then as before.
    pub fn script(&self, prefix: &str, replies: Vec<Reply>) {
        self.lock()
            .scripted
            .entry(prefix.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path().starts_with(prefix))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serve(stream: impl Read + Write, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("").to_owned();
        let reply = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            state.requests.push(Recorded {
                method,
                target,
                headers,
                body,
            });
            state.reply_for(&path)
        };
        std::thread::sleep(reply.delay);
        let response = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
            reply.status,
            reason(reply.status),
            if reply.body.starts_with('{') {
                "application/json"
            } else {
                "text/plain"
            },
            reply.body.len() + if reply.cut_off { 100 } else { 0 },
            reply.body
        );
        let writer = reader.get_mut();
        if writer.write_all(response.as_bytes()).is_err() || writer.flush().is_err() || reply.cut_off {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A certificate authority and a server certificate it signed for 127.0.0.1, made by `openssl`.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    pub fn create() -> TestCa {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let p = |name: &str| dir.path().join(name);
        let ext = p("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("writing the extensions file");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout"],
                &[path_str(&p("ca.key"))],
                &[
                    "-out",
                    path_str(&p("ca.pem")),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=kured test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    path_str(&p("server.key")),
                    "-out",
                    path_str(&p("server.csr")),
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&p("server.csr")),
            "-CA",
            path_str(&p("ca.pem")),
            "-CAkey",
            path_str(&p("ca.key")),
            "-CAcreateserial",
            "-out",
            path_str(&p("server.pem")),
            "-days",
            "2",
            "-extfile",
            path_str(&ext),
        ]);
        TestCa {
            ca_pem: p("ca.pem"),
            cert_pem: p("server.pem"),
            key_pem: p("server.key"),
            dir,
        }
    }

    /// The CA certificate, for `Options::extra_roots`.
    pub fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&self.ca_pem).expect("the CA certificate reads")
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("the notification tests need openssl to make certificates ({e}); install the Debian package openssl")
    });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test, naming the package, unless Debian's python3-aiosmtpd is installed.
pub fn require_aiosmtpd() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the SMTP tests need a real SMTP server: install the Debian package python3-aiosmtpd \
         (apt-get install -y python3-aiosmtpd; scripts/test does this)"
    );
}

/// An SMTP server process; its output goes to a file the test reads. Killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    child: Child,
    output: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// `python3 -m aiosmtpd` as its command line offers it: the Debugging handler prints each
    /// message; with `tls`, STARTTLS is offered and required before mail.
    pub fn cli(tls: Option<&TestCa>) -> SmtpServer {
        require_aiosmtpd();
        let port = free_port();
        let mut args = vec![
            "-u".to_owned(),
            "-m".to_owned(),
            "aiosmtpd".to_owned(),
            "-n".to_owned(),
            "-l".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        if let Some(ca) = tls {
            args.extend([
                "--tlscert".to_owned(),
                path_str(&ca.cert_pem).to_owned(),
                "--tlskey".to_owned(),
                path_str(&ca.key_pem).to_owned(),
            ]);
        }
        SmtpServer::spawn(port, &args)
    }

    /// `smtp_receiver.py`: requires AUTH with `user`/`password`, over STARTTLS (`implicit` false,
    /// STARTTLS required before mail) or implicit TLS; prints each message as a JSON line.
    pub fn authenticating(ca: &TestCa, implicit: bool, user: &str, password: &str) -> SmtpServer {
        require_aiosmtpd();
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/receivers/smtp_receiver.py");
        let args = vec![
            "-u".to_owned(),
            path_str(&script).to_owned(),
            if implicit { "implicit" } else { "starttls" }.to_owned(),
            port.to_string(),
            path_str(&ca.cert_pem).to_owned(),
            path_str(&ca.key_pem).to_owned(),
            user.to_owned(),
            password.to_owned(),
        ];
        SmtpServer::spawn(port, &args)
    }

    fn spawn(port: u16, args: &[String]) -> SmtpServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("smtp.out");
        let file = std::fs::File::create(&output).expect("creating the output file");
        let child = Command::new(PYTHON)
            .args(args)
            .stdout(file.try_clone().expect("a second handle"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PYTHON} {args:?}: {e}"));
        let mut server = SmtpServer {
            port,
            child,
            output,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the SMTP server exited ({status}): {}", self.output());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the SMTP server did not listen on port {} within 15 s: {}",
            self.port,
            self.output()
        );
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The messages `smtp_receiver.py` printed.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.output()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
