//! The HTTP/JSON port against a real three-node cluster: the same
//! transaction through tarpc and HTTP is applied once, a login and reads
//! work with a bearer token, events resume from their cursors (long poll
//! and SSE's Last-Event-ID), hostile requests get the documented statuses,
//! and `docs/openapi.json` lists exactly the router's routes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Servers;
use garrison_client::token::Challenge;
use garrison_client::tx::Transaction;
use garrison_client::{Keypair, Op, Value};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request on a fresh connection: the status, the headers
/// and the body (read to the end: the request asks to close).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the node answers within a minute")
        .unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, head, body)
}

fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Json,
) -> (u16, Json) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, body) = request(addr, method, path, &headers, &body).await;
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {status} {:?} is not JSON: {e}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

async fn login(addr: SocketAddr, key: &Keypair) -> String {
    let (status, challenge) = call(addr, "POST", "/v1/challenge", None, Json::Null).await;
    assert_eq!(status, 200, "{challenge}");
    let c = Challenge {
        body: hex::decode(challenge["body"].as_str().unwrap()).unwrap(),
        signature: hex::decode(challenge["signature"].as_str().unwrap()).unwrap(),
    };
    let answer = c.answer(key);
    let (status, reply) = call(
        addr,
        "POST",
        "/v1/login",
        None,
        json!({"player": hex::encode(key.public()), "challenge": challenge, "answer": hex::encode(answer)}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["claims"]["player"], hex::encode(key.public()));
    reply["token"].as_str().unwrap().to_string()
}

fn signed_body(tx: &Transaction, key: &Keypair) -> Json {
    let signed = tx.sign(key.signing_key());
    json!({"transaction": hex::encode(&signed.transaction), "signature": hex::encode(&signed.signature)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_port_serves_the_same_api() {
    let servers = Servers::start(3, "http").await;
    let client = servers.client().await;
    servers.create_location(&client, "front").await;
    let addr = servers.server(1).http_addr.expect("an HTTP port");
    let key = Keypair::generate();

    // The same signed transaction, through tarpc and then HTTP: applied once.
    let tx = Transaction {
        cluster: "http".into(),
        location: "front".into(),
        player: key.public(),
        sequence: 1,
        ops: vec![Op::Put {
            entity: "unit/1".into(),
            fields: vec![("hp".into(), Value::Int(10))],
        }],
    };
    let first = client.submit(&tx.sign(key.signing_key())).await.unwrap();
    let (status, receipt) = call(
        addr,
        "POST",
        "/v1/transactions",
        None,
        signed_body(&tx, &key),
    )
    .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["outcome"], "committed");
    assert_eq!(receipt["duplicate"], true);
    assert_eq!(receipt["index"], first.index);
    assert_eq!(receipt["events"][0]["kind"], "created");

    // base64 works too; a rejected transaction is a 200 receipt.
    let stale = Transaction {
        sequence: 2,
        ops: vec![Op::ExpectVersion {
            entity: "unit/1".into(),
            version: 1,
        }],
        ..tx.clone()
    };
    let signed = stale.sign(key.signing_key());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (status, receipt) = call(
        addr,
        "POST",
        "/v1/transactions",
        None,
        json!({"transaction": b64.encode(&signed.transaction), "signature": b64.encode(&signed.signature), "encoding": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["outcome"], "rejected");
    assert_eq!(receipt["rejection"]["code"], "version_mismatch");
    assert_eq!(receipt["rejection"]["actual"], first.index);

    // Reads with a bearer token.
    let token = login(addr, &key).await;
    let (status, read) = call(
        addr,
        "GET",
        "/v1/locations/front/entities/unit/1",
        Some(&token),
        Json::Null,
    )
    .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["entity"]["fields"]["hp"], 10);
    let path = format!(
        "/v1/locations/front/players/{}/next_sequence",
        hex::encode(key.public())
    );
    let (status, next) = call(addr, "GET", &path, None, Json::Null).await;
    assert_eq!((status, next["next_sequence"].as_u64()), (200, Some(3)));
    let (status, status_json) = call(addr, "GET", "/v1/status", None, Json::Null).await;
    assert_eq!(status, 200);
    assert_eq!(status_json["http_addrs"].as_object().unwrap().len(), 3);

    // Events: a long poll from the oldest, then resuming after its cursor.
    let (status, batch) = call(
        addr,
        "GET",
        "/v1/events?location=front&type=created&type=changed&max=10",
        Some(&token),
        Json::Null,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["events"][0]["entity"], "unit/1");
    let cursor = batch["cursors"]["front"].as_str().unwrap().to_string();
    let third = Transaction {
        sequence: 3,
        ops: vec![Op::Put {
            entity: "unit/1".into(),
            fields: vec![("hp".into(), Value::Int(7))],
        }],
        ..tx.clone()
    };
    client.submit(&third.sign(key.signing_key())).await.unwrap();
    let path = format!("/v1/events?location=front&after=front@{cursor}&type=changed&wait_ms=10000");
    let (status, batch) = call(addr, "GET", &path, Some(&token), Json::Null).await;
    assert_eq!(status, 200, "{batch}");
    let events = batch["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{batch}");
    assert_eq!(events[0]["changes"][0]["new"], 7);

    // SSE: from the start; the first message's id resumes after it.
    let auth = format!("Bearer {token}");
    let sse = |last: Option<String>| {
        let auth = auth.clone();
        async move {
            let mut headers = vec![
                ("Authorization", auth.as_str()),
                ("Accept", "text/event-stream"),
            ];
            if let Some(last) = &last {
                headers.push(("Last-Event-ID", last.as_str()));
            }
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut head = String::from(
                "GET /v1/events/stream?location=front&type=created&type=changed HTTP/1.1\r\nHost: x\r\n",
            );
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut seen = String::new();
            let mut buf = [0u8; 4096];
            while !seen.contains("\ndata:")
                || !seen[seen.find("\ndata:").unwrap()..].contains("\n\n")
            {
                let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                    .await
                    .expect("an SSE message within 30 s")
                    .unwrap();
                assert!(n > 0, "the stream ended: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            seen
        }
    };
    let first_message = sse(None).await;
    assert!(first_message.starts_with("HTTP/1.1 200"), "{first_message}");
    let id_line = first_message
        .lines()
        .find(|l| l.starts_with("id:"))
        .expect("an id");
    let id = id_line[3..].trim().to_string();
    assert!(id.starts_with("front@"), "{id}");
    assert!(
        first_message.contains("\"type\":\"created\""),
        "{first_message}"
    );
    let resumed = sse(Some(id)).await;
    assert!(resumed.contains("\"type\":\"changed\""), "{resumed}");
    assert!(!resumed.contains("\"type\":\"created\""), "{resumed}");

    // Hostile input: each refused with its documented status and kind.
    let mut forged = signed_body(&third, &key);
    forged["signature"] = hex::encode([7u8; 64]).into();
    let (status, e) = call(addr, "POST", "/v1/transactions", None, forged).await;
    assert_eq!(
        (
            status,
            e["error"]["kind"].as_str(),
            e["error"]["code"].as_str()
        ),
        (400, Some("transaction"), Some("bad_signature"))
    );
    let (status, e) = call(
        addr,
        "POST",
        "/v1/transactions",
        None,
        json!({"transaction": 1}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["kind"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    let (status, _, body) =
        request(addr, "POST", "/v1/transactions", &[], &vec![b'x'; 200_000]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, e) = call(addr, "GET", "/v1/locations/front", None, Json::Null).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (401, Some("missing"))
    );
    let (status, e) = call(
        addr,
        "GET",
        "/v1/locations/front",
        Some("00.00"),
        Json::Null,
    )
    .await;
    assert_eq!(
        (status, e["error"]["kind"].as_str()),
        (401, Some("token")),
        "{e}"
    );
    let (status, e) = call(
        addr,
        "GET",
        "/v1/locations/nowhere/entities/a",
        Some(&token),
        Json::Null,
    )
    .await;
    assert_eq!(
        (status, e["error"]["kind"].as_str()),
        (404, Some("unknown_location")),
        "{e}"
    );
    let (status, e) = call(
        addr,
        "GET",
        "/v1/events?location=front&type=nonsense",
        Some(&token),
        Json::Null,
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = call(addr, "DELETE", "/v1/status", None, Json::Null).await;
    assert_eq!(status, 405);
    // Nothing above changed the location.
    let path = format!(
        "/v1/locations/front/players/{}/next_sequence",
        hex::encode(key.public())
    );
    let (_, next) = call(addr, "GET", &path, None, Json::Null).await;
    assert_eq!(next["next_sequence"], 4);
    servers.shutdown().await;
}

/// `docs/openapi.json` documents every route the router serves, and no other.
#[test]
fn the_openapi_document_lists_the_routes() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    let doc: Json = serde_json::from_str(&text).expect("docs/openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = garrison::api::http::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.replace("{*key}", "{key}")))
        .collect();
    served.sort();
    assert_eq!(documented, served);
}
