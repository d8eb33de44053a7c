//! Plain HTTP on loopback, independent of the HTTP clients under test: a free port, and a GET
//! that reads the whole answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port free just now (the operating system's pick, released again): for a server
/// about to start, or as a port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` from `addr` over HTTP/1.0, the answer read to its end within `limit`: its status
/// code and body, or why there is none.
pub async fn get(addr: impl Into<SocketAddr>, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let addr = addr.into();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading the answer to GET {path} from {addr}: {e}"))?;
        let response = String::from_utf8_lossy(&response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer to GET {path} from {addr} within {limit:?}")))
}

/// [`get`], for a test without a runtime of its own.
pub fn get_blocking(
    addr: impl Into<SocketAddr>,
    path: &str,
    limit: Duration,
) -> Result<(u16, String), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(get(addr, path, limit))
}
