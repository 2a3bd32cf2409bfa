//! A small real HTTP/1.1 server on 127.0.0.1 for the tests: one thread per
//! connection, keep-alive, per-path behaviours (plain file, status codes,
//! failures then success, slow or trickled bodies, connections reset mid-body)
//! and request counting, so tests can assert how often hermit asked.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the server does for one path.
#[derive(Clone)]
pub enum Behaviour {
    /// 200 with this body.
    File(Vec<u8>),
    /// This status with an empty body.
    Status(u16),
    /// `failures` times `status`, then 200 with `body`.
    FailThen {
        failures: usize,
        status: u16,
        body: Vec<u8>,
    },
    /// Sends `first` bytes of the body, waits `pause`, sends the rest.
    Slow {
        body: Vec<u8>,
        first: usize,
        pause: Duration,
    },
    /// Sends the body `chunk` bytes at a time, waiting `every` between chunks.
    Trickle {
        body: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// The first `resets` requests get half the body and then a TCP reset
    /// (SO_LINGER 0 + close); later ones get the whole body.
    ResetThen { resets: usize, body: Vec<u8> },
    /// Waits `delay` before answering, then 200 with `body`.
    LateHead { body: Vec<u8>, delay: Duration },
}

struct State {
    routes: HashMap<String, Behaviour>,
    /// Prefix → folder served as static files.
    dirs: Vec<(String, PathBuf)>,
    counts: HashMap<String, usize>,
    total: usize,
    in_flight: usize,
    max_in_flight: usize,
    /// Answer as an HTTP/1.0 server that closes every connection.
    http10: bool,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(false)
    }

    /// A server that answers in HTTP/1.0 and closes each connection after
    /// one response (like `python3 -m http.server`).
    pub fn start_http10() -> Server {
        Server::start_with(true)
    }

    fn start_with(http10: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            routes: HashMap::new(),
            dirs: Vec::new(),
            counts: HashMap::new(),
            total: 0,
            in_flight: 0,
            max_in_flight: 0,
            http10,
        }));
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || serve_connection(conn, st));
            }
        });
        Server { addr, state }
    }

    pub fn route(&self, path: &str, b: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), b);
    }

    /// Serves files under `dir` at `prefix` (e.g. "/mirror/").
    pub fn serve_dir(&self, prefix: &str, dir: impl Into<PathBuf>) {
        self.state
            .lock()
            .unwrap()
            .dirs
            .push((prefix.to_string(), dir.into()));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests seen for `path`.
    pub fn count(&self, path: &str) -> usize {
        *self.state.lock().unwrap().counts.get(path).unwrap_or(&0)
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Requests seen for any path.
    pub fn total(&self) -> usize {
        self.state.lock().unwrap().total
    }
}

fn serve_connection(conn: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Headers, ignored, up to the blank line.
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) if h == "\r\n" || h == "\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let (behaviour, nth, http10) = {
            let mut s = state.lock().unwrap();
            s.total += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            let n = s.counts.entry(path.clone()).or_insert(0);
            *n += 1;
            let nth = *n;
            let b = s.routes.get(&path).cloned().or_else(|| {
                s.dirs.iter().find_map(|(prefix, dir)| {
                    let rest = path.strip_prefix(prefix.as_str())?;
                    if rest.split('/').any(|c| c == ".." || c.is_empty()) {
                        return Some(Behaviour::Status(404));
                    }
                    Some(match std::fs::read(dir.join(rest)) {
                        Ok(body) => Behaviour::File(body),
                        Err(_) => Behaviour::Status(404),
                    })
                })
            });
            (b.unwrap_or(Behaviour::Status(404)), nth, s.http10)
        };
        let keep = respond(&mut out, behaviour, nth, http10);
        state.lock().unwrap().in_flight -= 1;
        if !keep || http10 {
            return;
        }
    }
}

fn head(out: &mut TcpStream, status: u16, len: usize, http10: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let version = if http10 { "1.0" } else { "1.1" };
    write!(
        out,
        "HTTP/{version} {status} {reason}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
}

/// Answers one request; false when the connection must close.
fn respond(out: &mut TcpStream, b: Behaviour, nth: usize, http10: bool) -> bool {
    let head = |out: &mut TcpStream, status, len| head(out, status, len, http10);
    let r = (|| -> std::io::Result<bool> {
        match b {
            Behaviour::File(body) => {
                head(out, 200, body.len())?;
                out.write_all(&body)?;
            }
            Behaviour::Status(s) => head(out, s, 0)?,
            Behaviour::FailThen {
                failures,
                status,
                body,
            } => {
                if nth <= failures {
                    head(out, status, 0)?;
                } else {
                    head(out, 200, body.len())?;
                    out.write_all(&body)?;
                }
            }
            Behaviour::Slow { body, first, pause } => {
                head(out, 200, body.len())?;
                let first = first.min(body.len());
                out.write_all(&body[..first])?;
                out.flush()?;
                thread::sleep(pause);
                out.write_all(&body[first..])?;
            }
            Behaviour::Trickle { body, chunk, every } => {
                head(out, 200, body.len())?;
                for (i, c) in body.chunks(chunk.max(1)).enumerate() {
                    if i > 0 {
                        thread::sleep(every);
                    }
                    out.write_all(c)?;
                    out.flush()?;
                }
            }
            Behaviour::ResetThen { resets, body } => {
                head(out, 200, body.len())?;
                if nth <= resets {
                    out.write_all(&body[..body.len() / 2])?;
                    out.flush()?;
                    thread::sleep(Duration::from_millis(50));
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    nix::sys::socket::setsockopt(&*out, nix::sys::socket::sockopt::Linger, &linger)
                        .map_err(std::io::Error::from)?;
                    return Ok(false);
                }
                out.write_all(&body)?;
            }
            Behaviour::LateHead { body, delay } => {
                thread::sleep(delay);
                head(out, 200, body.len())?;
                out.write_all(&body)?;
            }
        }
        out.flush()?;
        Ok(true)
    })();
    match r {
        Ok(keep) => keep,
        Err(_) => {
            let _ = out.shutdown(Shutdown::Both);
            false
        }
    }
}
