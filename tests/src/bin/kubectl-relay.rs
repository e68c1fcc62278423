//! `kubectl` in a node guest (installed under that name): hands the call to
//! the real kubectl on the host (`mock_device_testkit::relay`), prints what
//! it prints, exits with its code. `kubectl config` (local files only) runs
//! the real binary here.

use std::io::{Read, Write};
use std::process::ExitCode;

use mock_device_testkit::relay::{self, Frame, Request};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("config") {
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(relay::GUEST_REAL_KUBECTL).args(&args).exec();
        eprintln!("kubectl (relay): {}: {e}", relay::GUEST_REAL_KUBECTL);
        return ExitCode::from(1);
    }
    match call(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("kubectl (relay to the host's kubectl at {}): {e}", relay::GUEST_ADDR);
            ExitCode::from(1)
        }
    }
}

fn call(args: Vec<String>) -> std::io::Result<i32> {
    let cwd = std::env::current_dir()?.to_string_lossy().into_owned();
    let is_file = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.is_file());
    // Relative `-f` paths made absolute: the host knows no guest cwd.
    let mut args_abs = Vec::with_capacity(args.len());
    let mut after_filename = false;
    for a in &args {
        if after_filename && a != "-" && !a.starts_with('/') && is_file(a) {
            args_abs.push(format!("{}/{a}", cwd.trim_end_matches('/')));
        } else {
            args_abs.push(a.clone());
        }
        after_filename = a == "-f" || a == "--filename";
    }
    let kubeconfig = std::env::var("KUBECONFIG").ok().filter(|k| !k.is_empty());
    let mut files = std::collections::BTreeMap::new();
    let mut kubeconfigs: Vec<String> = args_abs
        .iter()
        .filter_map(|a| a.strip_prefix("--kubeconfig="))
        .map(str::to_string)
        .collect();
    kubeconfigs.extend(kubeconfig.iter().cloned());
    for path in relay::named_files(&args_abs, is_file, &cwd)
        .into_iter()
        .chain(kubeconfigs.iter().filter(|k| is_file(k)).cloned())
    {
        let data = std::fs::read(&path)?;
        if kubeconfigs.contains(&path) {
            // What the kubeconfig names goes too.
            for named in relay::kubeconfig_files(&String::from_utf8_lossy(&data)) {
                if is_file(&named) {
                    files.insert(named.clone(), std::fs::read(&named)?);
                }
            }
        }
        files.insert(path, data);
    }
    let mut stdin = Vec::new();
    if relay::reads_stdin(&args_abs) {
        std::io::stdin().read_to_end(&mut stdin)?;
    }
    let request = Request {
        args: args_abs,
        kubeconfig,
        files,
        stdin,
    };
    let mut stream = std::net::TcpStream::connect(relay::GUEST_ADDR)?;
    stream.write_all(&request.encode())?;
    let mut reader = std::io::BufReader::new(stream);
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        match Frame::read_from(&mut reader)? {
            Some(Frame::Stdout(d)) => out.write_all(&d)?,
            Some(Frame::Stderr(d)) => err.write_all(&d)?,
            Some(Frame::Exit(code)) => {
                out.flush()?;
                return Ok(code);
            }
            None => {
                return Err(std::io::Error::other(
                    "the host closed the call before kubectl's exit code",
                ));
            }
        }
    }
}
