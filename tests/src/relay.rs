//! kubectl on the host for a node guest: the guest's `kubectl` is a relay
//! (`kubectl-relay`), the real kubectl runs natively on the host against
//! the guest's API server.
//!
//! Measured on the emulated node (the DRA features scenario, 731 s): its
//! 290 kubectl calls cost the guest 358 s of CPU (1.2 s a `get`, 4 s an
//! `apply`: kubectl's start and client-side work, 35 times slower under
//! software emulation than natively), more than the API server's 198 s,
//! and each call held the scenario for 2.3 s. Natively a call costs the
//! host about 60 ms; the guest pays the relay's start and the API server's
//! own work. Users run kubectl outside their nodes too.
//!
//! The guest reaches the relay through QEMU's user network: a `guestfwd`
//! rule turns each connection to [`GUEST_ADDR`] into a `busybox nc` to the
//! relay's loopback port ([`Relay::start`]); kubectl reaches the guest's
//! API server through a `hostfwd` of a host loopback port. Nothing leaves
//! the machine (`restrict=on`).
//!
//! A request carries kubectl's arguments, the guest files they name (and
//! `KUBECONFIG`'s), and what kubectl would read on stdin (`-f -`); the
//! reply is kubectl's stdout and stderr as they come, then its exit code.
//! The guest's API address in kubeconfigs and arguments
//! (`https://127.0.0.1:<api port>`) becomes the forwarded one. `kubectl
//! config` (local files only) runs in the guest, as the real binary.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the guest reaches the relay (QEMU's `guestfwd`).
pub const GUEST_ADDR: &str = "10.0.2.100:7001";
/// The real kubectl in the guest, for what stays there (`kubectl config`).
pub const GUEST_REAL_KUBECTL: &str = "/usr/local/bin/kubectl.real";

const MAGIC: &[u8] = b"MOCKRELAY1\n";

/// One kubectl call, as the guest sends it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub args: Vec<String>,
    /// `KUBECONFIG`, if set in the guest.
    pub kubeconfig: Option<String>,
    /// Guest files the call names, by absolute guest path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// What kubectl reads on stdin (`-f -`), if anything.
    pub stdin: Vec<u8>,
}

/// A piece of the reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn get_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// At most this much in one field: a manifest or a file of the guest's.
const MAX_FIELD: u32 = 64 << 20;

fn get_bytes(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let n = get_u32(r)?;
    if n > MAX_FIELD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a field of {n} bytes"),
        ));
    }
    let mut b = vec![0; n as usize];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn get_string(r: &mut impl Read) -> io::Result<String> {
    String::from_utf8(get_bytes(r)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.args.len() as u32).to_be_bytes());
        for a in &self.args {
            put_bytes(&mut out, a.as_bytes());
        }
        put_bytes(&mut out, self.kubeconfig.as_deref().unwrap_or_default().as_bytes());
        out.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (path, data) in &self.files {
            put_bytes(&mut out, path.as_bytes());
            put_bytes(&mut out, data);
        }
        put_bytes(&mut out, &self.stdin);
        out
    }

    pub fn decode(r: &mut impl Read) -> io::Result<Request> {
        let mut magic = vec![0; MAGIC.len()];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a kubectl relay request",
            ));
        }
        let n = get_u32(r)?;
        if n > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{n} arguments")));
        }
        let args = (0..n).map(|_| get_string(r)).collect::<io::Result<_>>()?;
        let kubeconfig = Some(get_string(r)?).filter(|s| !s.is_empty());
        let n = get_u32(r)?;
        if n > 256 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{n} files")));
        }
        let mut files = BTreeMap::new();
        for _ in 0..n {
            let path = get_string(r)?;
            files.insert(path, get_bytes(r)?);
        }
        let stdin = get_bytes(r)?;
        Ok(Request {
            args,
            kubeconfig,
            files,
            stdin,
        })
    }
}

impl Frame {
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let (kind, data): (u8, &[u8]) = match self {
            Frame::Stdout(d) => (b'1', d),
            Frame::Stderr(d) => (b'2', d),
            Frame::Exit(code) => {
                let mut b = vec![b'x'];
                b.extend_from_slice(&4u32.to_be_bytes());
                b.extend_from_slice(&code.to_be_bytes());
                return w.write_all(&b);
            }
        };
        let mut b = vec![kind];
        put_bytes(&mut b, data);
        w.write_all(&b)
    }

    /// The next frame; `None` at the end of the stream.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut kind = [0u8];
        if r.read(&mut kind)? == 0 {
            return Ok(None);
        }
        let data = get_bytes(r)?;
        Ok(Some(match kind[0] {
            b'1' => Frame::Stdout(data),
            b'2' => Frame::Stderr(data),
            b'x' if data.len() == 4 => Frame::Exit(i32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of kind {k}"),
                ));
            }
        }))
    }
}

/// Which arguments name files the call reads: every absolute path that is
/// a regular file in the guest, alone or as `--flag=PATH`, and the value
/// of `-f`/`--filename` (made absolute). Returned as guest paths.
pub fn named_files(args: &[String], is_file: impl Fn(&str) -> bool, cwd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_filename = false;
    for a in args {
        let value = a
            .split_once('=')
            .filter(|(k, _)| k.starts_with('-'))
            .map_or(a.as_str(), |(_, v)| v);
        let candidate = if value.starts_with('/') {
            Some(value.to_string())
        } else if after_filename && value != "-" {
            Some(format!("{}/{value}", cwd.trim_end_matches('/')))
        } else {
            None
        };
        if let Some(p) = candidate.filter(|p| is_file(p))
            && !out.contains(&p)
        {
            out.push(p);
        }
        after_filename = a == "-f" || a == "--filename";
    }
    out
}

/// The files a kubeconfig names (`certificate-authority`,
/// `client-certificate`, `client-key`, `tokenFile`), absolute paths.
pub fn kubeconfig_files(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().trim_start_matches("- ").split_once(':')?;
            ["certificate-authority", "client-certificate", "client-key", "tokenFile"]
                .contains(&k.trim())
                .then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
        })
        .filter(|v| v.starts_with('/'))
        .collect()
}

/// Whether kubectl would read its stdin: `-f -`, `--filename=-`.
pub fn reads_stdin(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| (w[0] == "-f" || w[0] == "--filename") && w[1] == "-")
        || args.iter().any(|a| a == "--filename=-" || a == "-f-")
}

/// The host's view of a guest call: arguments with shipped files at their
/// host paths (`root` + guest path) and the guest's API address replaced
/// by the forwarded one; relative `-f` paths made absolute first.
pub fn host_args(
    args: &[String],
    files: &BTreeMap<String, Vec<u8>>,
    root: &str,
    cwd: &str,
    api: (&str, &str),
) -> Vec<String> {
    let map = |v: &str| -> Option<String> {
        let abs = if v.starts_with('/') {
            v.to_string()
        } else {
            format!("{}/{v}", cwd.trim_end_matches('/'))
        };
        files
            .contains_key(&abs)
            .then(|| format!("{}{abs}", root.trim_end_matches('/')))
    };
    let mut out = Vec::new();
    let mut after_filename = false;
    for a in args {
        let rewritten = match a.split_once('=').filter(|(k, _)| k.starts_with('-')) {
            Some((k, v)) => map(v).map(|p| format!("{k}={p}")),
            None if a.starts_with('/') || after_filename => map(a),
            None => None,
        };
        out.push(rewritten.unwrap_or_else(|| a.replace(api.0, api.1)));
        after_filename = a == "-f" || a == "--filename";
    }
    out
}

/// The host side: serves one guest's kubectl calls (each connection one
/// call, on a thread of its own) until dropped.
pub struct Relay {
    /// The loopback port the guest's `guestfwd` connects to.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _home: tempfile::TempDir,
}

impl Relay {
    /// Listens on a loopback port; runs `kubectl` (the host's) for each
    /// call, with `https://127.0.0.1:<guest_api>` in the guest's
    /// kubeconfigs and arguments replaced by `https://127.0.0.1:<host_api>`
    /// (QEMU's `hostfwd` to the guest's API server). One HOME for the
    /// guest's calls: kubectl's discovery cache is shared by them.
    pub fn start(kubectl: PathBuf, guest_api: u16, host_api: u16) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let home = tempfile::Builder::new().prefix("mock-kubectl-relay-").tempdir()?;
        let stop = Arc::new(AtomicBool::new(false));
        let call = Arc::new(Call {
            kubectl,
            home: home.path().to_path_buf(),
            api: (
                format!("https://127.0.0.1:{guest_api}"),
                format!("https://127.0.0.1:{host_api}"),
            ),
        });
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kubectl-relay".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let call = call.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = call.serve(stream) {
                            eprintln!("kubectl relay: {e}");
                        }
                    });
                }
            })?;
        Ok(Relay {
            port,
            stop,
            thread: Some(thread),
            _home: home,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Call {
    kubectl: PathBuf,
    home: PathBuf,
    /// (the guest's API URL, the forwarded one)
    api: (String, String),
}

impl Call {
    fn serve(&self, stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let req = Request::decode(&mut &stream)?;
        stream.set_read_timeout(None)?;
        let dir = tempfile::Builder::new().prefix("call-").tempdir_in(&self.home)?;
        let root = dir.path().to_string_lossy().into_owned();
        let mut kubeconfigs: Vec<&str> = req.kubeconfig.iter().map(String::as_str).collect();
        kubeconfigs.extend(req.args.iter().filter_map(|a| a.strip_prefix("--kubeconfig=")));
        for (path, data) in &req.files {
            let to = Path::new(&root).join(path.trim_start_matches('/'));
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if kubeconfigs.contains(&path.as_str()) {
                // The guest's API address, and the guest files it names,
                // as the host sees them.
                let mut text = String::from_utf8_lossy(data).replace(&self.api.0, &self.api.1);
                for named in kubeconfig_files(&text) {
                    if req.files.contains_key(&named) {
                        text = text.replace(&named, &format!("{root}{named}"));
                    }
                }
                std::fs::write(&to, text)?;
            } else {
                std::fs::write(&to, data)?;
            }
        }
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(host_args(&req.args, &req.files, &root, "/", (&self.api.0, &self.api.1)))
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = &req.kubeconfig {
            let host = if req.files.contains_key(k) {
                format!("{root}{k}")
            } else {
                k.clone()
            };
            cmd.env("KUBECONFIG", host);
        }
        let mut child = crate::process::spawn(cmd)?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = req.stdin.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = Arc::new(Mutex::new(stream.try_clone()?));
        let pump = |mut from: Box<dyn Read + Send>, stdout: bool| {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; 64 << 10];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let frame = if stdout {
                        Frame::Stdout(buf[..n].to_vec())
                    } else {
                        Frame::Stderr(buf[..n].to_vec())
                    };
                    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
                    if frame.write_to(&mut *w).is_err() {
                        break;
                    }
                }
            })
        };
        let pumps = [
            pump(Box::new(child.stdout.take().expect("piped")), true),
            pump(Box::new(child.stderr.take().expect("piped")), false),
        ];
        // The guest gone (its `timeout` killed the relay, say): kubectl goes too.
        let gone = Arc::new(AtomicBool::new(false));
        let mut watch = stream.try_clone()?;
        let flag = gone.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            if let Ok(0) | Err(_) = watch.read(&mut b) {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if gone.load(Ordering::SeqCst) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for p in pumps {
            let _ = p.join();
        }
        let code = status
            .code()
            .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        Frame::Exit(code).write_to(&mut *w)?;
        w.flush()?;
        let _ = w.shutdown(std::net::Shutdown::Both);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_request_and_its_frames_go_through_whole() {
        let mut files = BTreeMap::new();
        files.insert("/guest/deviceclasses.json".to_string(), b"{\"a\":\n1}\0x".to_vec());
        let req = Request {
            args: s(&["apply", "-f", "/guest/deviceclasses.json", "-o", "jsonpath={.a}", ""]),
            kubeconfig: Some("/etc/kubernetes/admin.conf".into()),
            files,
            stdin: b"kind: Pod\n".to_vec(),
        };
        let bytes = req.encode();
        assert_eq!(Request::decode(&mut bytes.as_slice()).unwrap(), req);
        let empty = Request::default();
        assert_eq!(Request::decode(&mut empty.encode().as_slice()).unwrap(), empty);
        assert!(Request::decode(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).is_err());
        assert!(Request::decode(&mut &bytes[..bytes.len() - 3]).is_err(), "cut short");

        let frames = [
            Frame::Stdout(b"NAME\n".to_vec()),
            Frame::Stderr(vec![]),
            Frame::Exit(-1),
            Frame::Exit(3),
        ];
        let mut out = Vec::new();
        for f in &frames {
            f.write_to(&mut out).unwrap();
        }
        let mut r = out.as_slice();
        for f in &frames {
            assert_eq!(Frame::read_from(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read_from(&mut r).unwrap(), None);
    }

    #[test]
    fn the_files_a_kubeconfig_names_are_found() {
        let kc = "clusters:\n- cluster:\n    certificate-authority: /etc/kubernetes/pki/ca.crt\n    server: https://127.0.0.1:6443\n\
                  users:\n- name: a\n  user:\n    client-certificate: \"/tmp/c.crt\"\n    client-key: rel.key\n    tokenFile: '/t'\n";
        assert_eq!(kubeconfig_files(kc), ["/etc/kubernetes/pki/ca.crt", "/tmp/c.crt", "/t"]);
    }

    #[test]
    fn the_files_a_call_names_are_found() {
        let exists = |p: &str| ["/guest/d.json", "/etc/kubernetes/pki/ca.crt", "/root/m.yaml"].contains(&p);
        let args = s(&[
            "--kubeconfig=/dev/null",
            "--certificate-authority=/etc/kubernetes/pki/ca.crt",
            "apply",
            "-f",
            "m.yaml",
            "--filename",
            "/guest/d.json",
            "/guest/d.json",
            "-f",
            "-",
            "/nonexistent",
        ]);
        assert_eq!(
            named_files(&args, exists, "/root"),
            ["/etc/kubernetes/pki/ca.crt", "/root/m.yaml", "/guest/d.json"]
        );
        assert!(reads_stdin(&args));
        assert!(reads_stdin(&s(&["create", "--filename=-"])));
        assert!(!reads_stdin(&s(&["get", "pods", "-o", "-"])));
    }

    #[test]
    fn host_arguments_name_host_files_and_the_forwarded_api() {
        let mut files = BTreeMap::new();
        files.insert("/etc/kubernetes/pki/ca.crt".to_string(), vec![]);
        files.insert("/root/m.yaml".to_string(), vec![]);
        let args = s(&[
            "--server=https://127.0.0.1:6443",
            "--certificate-authority=/etc/kubernetes/pki/ca.crt",
            "--kubeconfig=/dev/null",
            "apply",
            "-f",
            "m.yaml",
            "-o",
            "jsonpath={.x}",
        ]);
        assert_eq!(
            host_args(
                &args,
                &files,
                "/tmp/r/",
                "/root",
                ("https://127.0.0.1:6443", "https://127.0.0.1:41234")
            ),
            [
                "--server=https://127.0.0.1:41234",
                "--certificate-authority=/tmp/r/etc/kubernetes/pki/ca.crt",
                "--kubeconfig=/dev/null",
                "apply",
                "-f",
                "/tmp/r/root/m.yaml",
                "-o",
                "jsonpath={.x}",
            ]
        );
    }
}
