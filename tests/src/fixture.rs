//! A tiny real HTTP server for feed fixtures, listening on 127.0.0.1 inside a lab namespace
//! (where the daemon under test can reach it). It answers GET with the current body, sends an
//! ETag and honours If-None-Match with 304; paths given their own body ([`FixtureServer::serve_at`])
//! answer that one, without an ETag. Stopped (and its thread joined) on drop.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::daemon::in_netns;

#[derive(Default)]
struct Content {
    body: String,
    etag: Option<String>,
    /// Bodies of other paths than /feed.
    paths: HashMap<String, String>,
    requests: usize,
}

pub struct FixtureServer {
    pub port: u16,
    content: Arc<Mutex<Content>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FixtureServer {
    /// Starts the server inside the namespace at `netns_path`.
    pub fn start(netns_path: &str) -> anyhow::Result<Self> {
        let listener = in_netns(netns_path, || TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let content = Arc::new(Mutex::new(Content::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (content, stop) = (content.clone(), stop.clone());
            // The listening socket belongs to the namespace; this thread need not enter it.
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = answer(stream, &content);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            content,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/feed", self.port)
    }

    pub fn serve(&self, body: &str, etag: Option<&str>) {
        let mut c = self.content.lock().expect("not poisoned");
        c.body = body.to_string();
        c.etag = etag.map(String::from);
    }

    /// Serves `body` at `path` (e.g. "/ip2asn.tsv"); its URL is [`Self::url_of`].
    pub fn serve_at(&self, path: &str, body: &str) {
        let mut c = self.content.lock().expect("not poisoned");
        c.paths.insert(path.to_string(), body.to_string());
    }

    pub fn url_of(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.content.lock().expect("not poisoned").requests
    }
}

fn answer(stream: std::net::TcpStream, content: &Mutex<Content>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut if_none_match = None;
    let mut line = String::new();
    reader.read_line(&mut line)?; // request line: GET /path HTTP/1.1
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_string());
        }
    }
    let mut c = content.lock().expect("not poisoned");
    c.requests += 1;
    let mut stream = stream;
    if let Some(body) = c.paths.get(&path) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        return stream.write_all(body.as_bytes());
    }
    if c.etag.is_some() && c.etag == if_none_match {
        return stream.write_all(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
    }
    let etag = c
        .etag
        .as_ref()
        .map(|e| format!("ETag: {e}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{etag}Connection: close\r\n\r\n",
        c.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(c.body.as_bytes())
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
