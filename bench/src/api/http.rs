//! A minimal HTTP/1.1 keep-alive client over one `TcpStream`: just enough to time requests to
//! the daemon without a client library's own machinery (connection pools, async runtimes) in
//! the measurement. It speaks to xdpwall's API only: Content-Length bodies, no chunking.

use std::{
    io::{self, BufRead as _, BufReader, BufWriter, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One persistent connection; every request reuses it (the daemon keeps HTTP/1.1 connections
/// open unless told otherwise).
pub struct Connection {
    addr: SocketAddr,
    token: String,
    reader: BufReader<TcpStream>,
    // Headers and a small body leave in one segment when flushed; a large body bypasses the
    // buffer instead of being copied into it.
    writer: BufWriter<TcpStream>,
}

impl Connection {
    /// Connects from the calling thread's network namespace.
    pub fn open(addr: SocketAddr, token: &str, timeout: Duration) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        // Requests are written whole and then waited for: Nagle would only add delay.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            addr,
            token: token.to_string(),
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, stream),
        })
    }

    /// How long one read may block, i.e. the longest wait for the daemon to start answering.
    pub fn set_timeout(&self, timeout: Duration) -> anyhow::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        self.writer.get_ref().set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends one request with the bearer token and reads the whole response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        json_body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        self.request_typed(method, path, json_body.map(|b| ("application/json", b)))
    }

    /// [`Self::request`] with a body of any content type.
    pub fn request_typed(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Response> {
        self.send(method, path, body)
            .with_context(|| format!("sending {method} {path} to {}", self.addr))?;
        self.receive()
            .with_context(|| format!("reading the answer to {method} {path} from {}", self.addr))
    }

    fn send(&mut self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> io::Result<()> {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n",
            self.token
        )?;
        match body {
            Some((content_type, body)) => {
                write!(
                    self.writer,
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                self.writer.write_all(body)?;
            }
            None => self.writer.write_all(b"\r\n")?,
        }
        self.writer.flush()
    }

    fn receive(&mut self) -> anyhow::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the daemon closed the connection");
        }
        // "HTTP/1.1 201 Created"
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed status line {line:?}"))?;
        let mut content_length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the daemon closed the connection inside the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("malformed header {header:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("Transfer-Encoding {value} is not supported by this client");
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                // The measurement is defined over one connection: a reconnect would hide cost.
                bail!("the daemon asked to close the keep-alive connection");
            }
        }
        let mut body = vec![0; content_length];
        self.reader.read_exact(&mut body)?;
        Ok(Response { status, body })
    }
}

/// Whether `error` is a read or write that hit the connection's timeout.
pub fn is_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        })
    })
}
