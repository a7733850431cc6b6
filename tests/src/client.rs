//! A WebSocket client speaking the rooms client protocol, for tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rooms_proto::server::ServerFrame;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::DEADLINE;

/// What a client reads next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Frame(ServerFrame),
    /// The server closed the connection, with the close code if it sent one.
    Closed(Option<u16>, String),
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| tungstenite::Error::ConnectionClosed)??;
        Ok(Self { ws })
    }

    /// Connects offering WebSocket subprotocols; also returns the one the
    /// server selected.
    pub async fn connect_with_protocols(
        url: &str,
        protocols: &str,
    ) -> Result<(Self, Option<String>), tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        let value = protocols.parse().map_err(|_| tungstenite::Error::ConnectionClosed)?;
        request.headers_mut().insert("sec-websocket-protocol", value);
        let (ws, response) =
            tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| tungstenite::Error::ConnectionClosed)??;
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((Self { ws }, selected))
    }

    /// Connects over an already open TCP connection (e.g. one made inside a
    /// network namespace).
    pub async fn connect_over(url: &str, stream: TcpStream) -> Result<Self, tungstenite::Error> {
        let handshake = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream));
        let (ws, _) = tokio::time::timeout(DEADLINE, handshake)
            .await
            .map_err(|_| tungstenite::Error::ConnectionClosed)??;
        Ok(Self { ws })
    }

    /// Reads `welcome` and `history` after connecting.
    pub async fn welcomed(mut self) -> (Self, ServerFrame, ServerFrame) {
        let welcome = self.frame().await;
        assert!(matches!(welcome, ServerFrame::Welcome { .. }), "first frame: {welcome:?}");
        let history = self.frame().await;
        assert!(matches!(history, ServerFrame::History { .. }), "second frame: {history:?}");
        (self, welcome, history)
    }

    /// Connects and reads `welcome` and `history`, returning them.
    pub async fn join(url: &str) -> (Self, ServerFrame, ServerFrame) {
        let mut client = Self::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let welcome = client.frame().await;
        assert!(matches!(welcome, ServerFrame::Welcome { .. }), "first frame: {welcome:?}");
        let history = client.frame().await;
        assert!(matches!(history, ServerFrame::History { .. }), "second frame: {history:?}");
        (client, welcome, history)
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends unless the connection is gone; false if it is.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    pub async fn chat(&mut self, text: &str, id: &str) {
        self.send_json(serde_json::json!({"type": "chat", "text": text, "id": id})).await;
    }

    /// The next frame or close, waiting at most `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        loop {
            let message = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Received::Closed(None, String::new())),
                Ok(Some(Err(_))) => return Some(Received::Closed(None, String::new())),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    let frame = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("unreadable frame {text}: {e}"));
                    return Some(Received::Frame(frame));
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    return Some(Received::Closed(code, reason));
                }
                _ => continue,
            }
        }
    }

    /// The next text message as JSON, whatever protocol it speaks (a room
    /// class's own); panics on close or after the deadline.
    pub async fn json(&mut self) -> Value {
        match self.json_within(DEADLINE).await {
            Some(value) => value,
            None => panic!("no text message within {DEADLINE:?}"),
        }
    }

    /// The next text message as JSON, if one comes within `wait`; panics
    /// if the socket closes.
    pub async fn json_within(&mut self, wait: Duration) -> Option<Value> {
        let text = self.text_within(wait).await?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}")))
    }

    /// The next text message as it came, if one comes within `wait`;
    /// panics if the socket closes.
    pub async fn text_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match message {
                Some(Ok(Message::Text(text))) => return Some(text.as_str().to_owned()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next frame; panics on close or after the deadline.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.next_within(DEADLINE).await {
            Some(Received::Frame(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Skips frames until one matches.
    pub async fn until(&mut self, mut matches: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Received::Frame(frame)) if matches(&frame) => return frame,
                Some(Received::Frame(_)) => continue,
                other => panic!("expected a matching frame, got {other:?}"),
            }
        }
    }

    /// The next `error` frame's code.
    pub async fn error_code(&mut self) -> String {
        match self.until(|f| matches!(f, ServerFrame::Error { .. })).await {
            ServerFrame::Error { code, .. } => code,
            _ => unreachable!(),
        }
    }

    /// Skips frames until the connection closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Received::Closed(code, _)) => return code,
                Some(Received::Frame(_)) => continue,
                None => panic!("connection still open after the deadline"),
            }
        }
    }

    /// Collects chat frames until `count` arrived.
    pub async fn chats(&mut self, count: usize) -> Vec<ServerFrame> {
        let mut chats = Vec::with_capacity(count);
        while chats.len() < count {
            chats.push(self.until(|f| matches!(f, ServerFrame::Chat { .. })).await);
        }
        chats
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A plain HTTP/1.1 request; returns (status, headers+body text).
pub async fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    // Read the head, then Content-Length bytes of body (or to EOF without one);
    // the server may keep the connection open.
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let switching = head.starts_with("http/1.1 101");
                if switching || length.is_some_and(|len| buf.len() >= end + 4 + len) {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(DEADLINE, read).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// GET `path` with `Connection: close`.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")).await
}

/// One series of a Prometheus text page at `addr` (`GET /metrics`): the sum
/// of every line whose name (labels aside) is `name`; 0 when absent.
pub async fn metric(addr: &str, name: &str) -> f64 {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics on {addr}");
    parse_metric(&body, name)
}

/// The sum of the samples named `name` in a Prometheus text page.
pub fn parse_metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
