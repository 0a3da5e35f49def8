//! Request body limits: 413 before reading a declared oversize body, 413 when a streamed body
//! grows past the limit.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, raw, read_response, Gateway, Upstream};
use tokio::io::AsyncWriteExt;

async fn setup(target: &str) -> Gateway {
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost"]
max_body_size = "1KiB"

[[upstream]]
name = "api"
targets = ["{target}"]

[[route]]
name = "all"
path = "/"
upstream = "api"
auth = "none"
"#
    );
    Gateway::start(&config).await
}

fn post(len: usize) -> Vec<u8> {
    let mut req =
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    req.extend(std::iter::repeat_n(b'x', len));
    req
}

fn chunked(chunks: &[usize]) -> Vec<u8> {
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for &n in chunks {
        req.extend(format!("{n:x}\r\n").into_bytes());
        req.extend(std::iter::repeat_n(b'y', n));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn bodies_within_the_limit_pass_whole() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    let resp = raw(gw.addr, &post(1024)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1024);
    let resp = raw(gw.addr, &chunked(&[500, 524])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1024);
}

#[tokio::test]
async fn declared_oversize_body_is_refused_before_it_is_sent() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    // Only the header is sent: the answer must not wait for a body.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n\r\n").await.unwrap();
    let resp = read_response(&mut stream).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(resp.json()["error"]["details"]["max_body_size"], 1024);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn streamed_body_past_the_limit_is_cut_off_with_413() {
    let upstream = Upstream::start("api").await;
    let gw = setup(&upstream.addr.to_string()).await;
    let resp = raw(gw.addr, &chunked(&[600, 600, 600])).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn echo_counts_streamed_bodies_against_the_limit_too() {
    let gw = setup("builtin:echo").await;
    let resp = raw(gw.addr, &chunked(&[1000])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 1000);
    let resp = raw(gw.addr, &chunked(&[1000, 1000])).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = raw(gw.addr, &post(1025)).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
}
