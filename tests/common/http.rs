//! The operations endpoint (`http.listen`) from a test: one request, the metrics page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{Svcdns, WAIT};

/// `http:` configuration that serves the endpoint on a free loopback port.
pub const HTTP: &str = "http:\n  listen: 127.0.0.1:0\n";

/// One HTTP/1.1 request; the status code and the body.
pub fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to http.listen");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: svcdns\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn scrape(server: &Svcdns) -> String {
    let (status, page) = http(
        server.http.expect("http= in the ready line"),
        "GET",
        "/metrics",
    );
    assert_eq!(status, 200, "{page}");
    page
}

/// The value of the sample whose name and labels are exactly `sample`, 0 if absent.
pub fn metric_value(page: &str, sample: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("value of {sample}: {v}"))
        })
        .unwrap_or(0.0)
}
