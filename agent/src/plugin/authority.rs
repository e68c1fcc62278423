//! The `:authority` of gRPC clients that dial a unix socket by its bare path.
//!
//! grpc-go sends the dial target as the HTTP/2 `:authority`; for a target
//! without a scheme (`/var/lib/kubelet/plugins_registry/x-reg.sock`, which is
//! how the kubelet's plugin watcher dials registration sockets, 1.37.2
//! included) that is the path, percent-encoded (`%2Fvar%2Flib…`). h2, under
//! tonic, refuses such an authority before our service sees the request, and
//! answers RST_STREAM(PROTOCOL_ERROR): the real kubelet could never register
//! the plugin (hyperium/h2#487, open; kubernetes#112597 fixed the device
//! plugin and CSI clients, not the plugin watcher). Our own test kubelet used
//! tonic's client, which sends `localhost`, and never showed it.
//!
//! The kubelet's own DRA client dials `unix:…` and sends `localhost`, but a
//! client on gRPC's C core (grpcio) sends the socket path as `:authority`
//! for a `unix:` target too, to either socket: without the relay all four
//! of its calls to the DRA socket in `plugin_api`'s C-core test are reset
//! (tried 2026-12-06, tonic 0.14.9, h2 0.4.20, grpcio 1.76). So both sockets
//! have it; the canary below says when h2 stops refusing such an authority.
//!
//! [`relay`] sits between each accepted connection and the gRPC server: it
//! passes every frame through unchanged, except request header blocks,
//! which it decodes (HPACK, with the client's dynamic table) and encodes
//! again (with its own, towards the server) with an `:authority` h2 would
//! refuse replaced by `localhost`. Answers flow back untouched.

use std::io;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tracing::{debug, warn};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// The largest header block we collect from CONTINUATION frames.
const MAX_BLOCK: usize = 1 << 20;
/// The server side of each relayed connection buffers this much.
const PIPE: usize = 64 * 1024;

/// Relays `client` to a new in-memory connection whose other end is
/// returned, for the gRPC server to serve (tonic serves a `DuplexStream`).
pub fn relayed<C>(client: C) -> DuplexStream
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        match relay(client, ours).await {
            Ok(()) => {}
            // A peer that hung up, mid-frame or not: nothing was lost.
            Err(e) if hung_up(&e) => debug!(error = %e, "gRPC connection relay ended"),
            // A malformed frame or header block: the kubelet sees a reset.
            Err(e) => warn!(error = %e, "the registration socket's :authority relay failed"),
        }
    });
    theirs
}

fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Copies `client` ⇄ `server` until either side closes, rewriting request
/// header blocks on the way in.
pub async fn relay<C, S>(client: C, server: S) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let inbound = async {
        let r = requests(&mut client_rx, &mut server_tx).await;
        let _ = server_tx.shutdown().await;
        r
    };
    let outbound = async {
        let r = tokio::io::copy(&mut server_rx, &mut client_tx).await.map(|_| ());
        let _ = client_tx.shutdown().await;
        r
    };
    let (a, b) = tokio::join!(inbound, outbound);
    a.and(b)
}

/// The client's half: the preface, then frame by frame.
async fn requests<R, W>(rx: &mut R, tx: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    rx.read_exact(&mut preface).await?;
    tx.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server say so.
        return tokio::io::copy(rx, tx).await.map(|_| ());
    }
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    loop {
        let Some((kind, flags, stream, payload)) = read_frame(rx).await? else {
            return Ok(());
        };
        if kind != HEADERS {
            write_frame(tx, kind, flags, stream, &payload).await?;
            continue;
        }
        let (priority, mut block) = split_headers(flags, &payload)?;
        let mut end_headers = flags & END_HEADERS != 0;
        while !end_headers {
            let Some((kind, cflags, cstream, more)) = read_frame(rx).await? else {
                return Ok(());
            };
            if kind != CONTINUATION || cstream != stream || block.len() + more.len() > MAX_BLOCK {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "broken header block"));
            }
            block.extend_from_slice(&more);
            end_headers = cflags & END_HEADERS != 0;
        }
        let headers = decoder
            .decode(&block)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e}")))?;
        let headers = fix_authority(headers);
        let block = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        // One HEADERS frame (priority kept, padding dropped), CONTINUATION
        // frames after it if the block is larger than any peer must accept.
        let mut first = priority.map(<[u8]>::to_vec).unwrap_or_default();
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        let mut out_flags = flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            out_flags |= END_HEADERS;
        }
        write_frame(tx, HEADERS, out_flags, stream, &first).await?;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let f = if rest.is_empty() { END_HEADERS } else { 0 };
            write_frame(tx, CONTINUATION, f, stream, chunk).await?;
        }
    }
}

/// A HEADERS payload's priority fields (if flagged) and header block
/// fragment, padding removed.
fn split_headers(flags: u8, payload: &[u8]) -> io::Result<(Option<&[u8]>, Vec<u8>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HEADERS frame");
    let mut body = payload;
    if flags & PADDED != 0 {
        let (&pad, rest) = body.split_first().ok_or_else(bad)?;
        body = rest
            .get(..rest.len().checked_sub(pad as usize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    let priority = if flags & PRIORITY != 0 {
        let (p, rest) = body.split_at_checked(5).ok_or_else(bad)?;
        body = rest;
        Some(p)
    } else {
        None
    };
    Ok((priority, body.to_vec()))
}

/// `:authority` values that h2 refuses (anything but host[:port], as a bare
/// or percent-encoded path is) become `localhost`, which is what grpc-go
/// itself sends for `unix:` targets. Everything else is kept as sent.
pub fn fix_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name == b":authority" && tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_err() {
            debug!(authority = %String::from_utf8_lossy(value), "gRPC :authority replaced by localhost");
            *value = b"localhost".to_vec();
        }
    }
    headers
}

async fn read_frame<R: AsyncRead + Unpin>(rx: &mut R) -> io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match rx.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    rx.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    tx: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    tx.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refused_authorities_are_replaced() {
        let h = |a: &str| {
            vec![
                (b":authority".to_vec(), a.as_bytes().to_vec()),
                (b":path".to_vec(), b"/x".to_vec()),
            ]
        };
        for bad in [
            "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fd-reg.sock",
            "/var/lib/kubelet/x.sock",
        ] {
            assert_eq!(fix_authority(h(bad))[0].1, b"localhost", "{bad}");
            assert_eq!(fix_authority(h(bad))[1].1, b"/x");
        }
        for good in ["localhost", "127.0.0.1:8080", "dra.example.com"] {
            assert_eq!(fix_authority(h(good))[0].1, good.as_bytes());
        }
    }

    #[test]
    fn padding_and_priority_are_parsed() {
        // padded (pad 2), with priority (5 bytes), block "ab", 2 pad bytes
        let payload = [2, 0, 0, 0, 1, 16, b'a', b'b', 0, 0];
        let (p, block) = split_headers(PADDED | PRIORITY, &payload).unwrap();
        assert_eq!(p, Some(&[0, 0, 0, 1, 16][..]));
        assert_eq!(block, b"ab");
        assert!(split_headers(PADDED, &[9, 1]).is_err());
        assert!(split_headers(PRIORITY, &[0, 0]).is_err());
    }

    /// How a raw HTTP/2 request was met.
    #[derive(Debug, PartialEq)]
    enum Met {
        /// Response headers: the server took the request.
        Answered,
        /// RST_STREAM with this error code.
        Reset(u32),
        /// GOAWAY with this error code.
        GoneAway(u32),
    }

    /// One gRPC request on a fresh connection to `socket`, `authority` as
    /// sent (the way the kubelet's plugin watcher sends a bare path: the
    /// http crate cannot even hold it, so the frames are written by hand).
    async fn request(socket: &std::path::Path, authority: &str) -> Met {
        let mut c = tokio::net::UnixStream::connect(socket).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        write_frame(&mut c, 0x4, 0, 0, &[]).await.unwrap(); // SETTINGS
        let headers: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = Encoder::new().encode(headers);
        write_frame(&mut c, HEADERS, END_HEADERS | END_STREAM, 1, &block)
            .await
            .unwrap();
        let met = async {
            loop {
                let (kind, flags, stream, payload) = read_frame(&mut c).await.unwrap().expect("the server hung up");
                let code = || u32::from_be_bytes(payload[..4].try_into().unwrap());
                match kind {
                    // The server's SETTINGS: acknowledged, as a client must.
                    0x4 if flags & 0x1 == 0 => write_frame(&mut c, 0x4, 0x1, 0, &[]).await.unwrap(),
                    HEADERS if stream == 1 => return Met::Answered,
                    0x3 if stream == 1 => return Met::Reset(code()),
                    0x7 => return Met::GoneAway(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), met)
            .await
            .expect("no answer, reset or GOAWAY in 10 s")
    }

    /// The canary: h2 under a bare tonic server still refuses the
    /// percent-encoded socket path as `:authority` (hyperium/h2#487), which
    /// is why the registration socket has the relay. When this fails, h2
    /// accepts it and the relay can go. Through the relay it is answered.
    #[tokio::test]
    async fn a_bare_server_still_resets_a_path_authority_and_the_relay_fixes_it() {
        use tokio_stream::StreamExt;
        use tokio_stream::wrappers::UnixListenerStream;
        use tonic::service::Routes;
        use tonic::transport::Server;

        let dir = tempfile::tempdir().unwrap();
        let (bare, relayed_path) = (dir.path().join("bare.sock"), dir.path().join("relayed.sock"));
        let listener = tokio::net::UnixListener::bind(&bare).unwrap();
        tokio::spawn(
            Server::builder()
                .add_routes(Routes::default())
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let listener = tokio::net::UnixListener::bind(&relayed_path).unwrap();
        tokio::spawn(
            Server::builder()
                .add_routes(Routes::default())
                .serve_with_incoming(UnixListenerStream::new(listener).map(|c| c.map(relayed))),
        );
        let path = "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fmock-accel.example.com-reg.sock";
        const PROTOCOL_ERROR: u32 = 0x1;
        assert_eq!(request(&bare, "localhost").await, Met::Answered, "the raw client works");
        assert_eq!(
            request(&bare, path).await,
            Met::Reset(PROTOCOL_ERROR),
            "h2 now takes a path as :authority: the relay (authority.rs) can go"
        );
        assert_eq!(request(&relayed_path, path).await, Met::Answered);
        assert_eq!(request(&relayed_path, "localhost").await, Met::Answered);
    }
}
