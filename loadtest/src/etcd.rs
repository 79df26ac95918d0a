//! A throwaway etcd for cluster tests and the failover measurement: one member on loopback ports
//! with a temporary data dir, killed and its data removed when dropped. The binary is
//! `SWITCHBOARD_ETCD` (scripts/test.sh sets it), else `etcd` on the PATH (Debian's etcd-server).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStartError {
    /// No etcd binary.
    #[error(
        "etcd not found: install Debian's etcd-server (bash scripts/test.sh does), or set SWITCHBOARD_ETCD to an etcd binary"
    )]
    NotFound,
    /// It did not start or did not become healthy.
    #[error("etcd ({binary}) did not come up on loopback: {reason}")]
    NotUp {
        /// The binary.
        binary: String,
        /// What went wrong last.
        reason: String,
    },
}

/// A single-member etcd on loopback.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    data_dir: PathBuf,
    url: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary to run.
pub fn etcd_binary() -> Result<PathBuf, EtcdStartError> {
    if let Ok(path) = std::env::var("SWITCHBOARD_ETCD") {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or(EtcdStartError::NotFound)
}

/// Whether etcd at `address` (`host:port`) answers `GET /health` with a leader.
async fn healthy(address: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(1), probe).await.ok().flatten().unwrap_or(false)
}

impl EtcdServer {
    /// Starts etcd and waits (at most 15 s per attempt) until it is healthy; tries other ports if
    /// another process took one in between.
    pub async fn start() -> Result<Self, EtcdStartError> {
        let binary = etcd_binary()?;
        let not_up = |reason: String| EtcdStartError::NotUp { binary: binary.display().to_string(), reason };
        let mut last = String::new();
        for _attempt in 0..3 {
            let (client, peer) =
                (free_port().map_err(|e| not_up(e.to_string()))?, free_port().map_err(|e| not_up(e.to_string()))?);
            let data_dir = std::env::temp_dir().join(format!("switchboard-etcd-{}-{client}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data_dir);
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(&binary)
                .args(["--name", "test", "--data-dir"])
                .arg(&data_dir)
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("test={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|error| not_up(format!("starting it: {error}")))?;
            let server = Self { child, data_dir, url };
            let address = format!("127.0.0.1:{client}");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if healthy(&address).await {
                    return Ok(server);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last = format!("not healthy on {address} within 15 s");
        }
        Err(not_up(last))
    }

    /// Its client URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Whether `key` exists now in the etcd at `url` (`http://host:port`): a one-key count over etcd's
/// JSON gateway, within a second.
pub async fn key_exists(url: &str, key: &str) -> Result<bool, String> {
    Ok(count(url, serde_json::json!({ "key": base64(key.as_bytes()), "count_only": true })).await? > 0)
}

/// How many keys start with `prefix` now in the etcd at `url`, within a second.
pub async fn keys_under(url: &str, prefix: &str) -> Result<u64, String> {
    let range_end = prefix_end(prefix.as_bytes());
    let request =
        serde_json::json!({ "key": base64(prefix.as_bytes()), "range_end": base64(&range_end), "count_only": true });
    count(url, request).await
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte raised.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): every key from the prefix on.
    vec![0]
}

/// The count etcd's JSON gateway answers a `count_only` range `body` with.
async fn count(url: &str, body: serde_json::Value) -> Result<u64, String> {
    let address = url.trim_start_matches("http://");
    let body = body.to_string();
    let ask = async {
        let mut stream = TcpStream::connect(address).await.map_err(|error| error.to_string())?;
        let request = format!(
            "POST /v3/kv/range HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(|error| error.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|error| error.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .map_err(|_| format!("etcd at {address} did not answer within 1 s"))??;
    let json = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("etcd's answer {answer:?}: {error}"))?;
    // Proto3 JSON leaves a count of 0 out; 64-bit numbers come as strings.
    Ok(match &value["count"] {
        serde_json::Value::String(count) => count.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    })
}

/// Standard base64 with padding, as etcd's JSON gateway wants keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::{base64, prefix_end};

    #[test]
    fn a_prefix_range_ends_at_the_prefix_with_its_last_byte_raised() {
        assert_eq!(prefix_end(b"/sb/owners/"), b"/sb/owners0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
    }

    #[test]
    fn keys_are_base64_encoded_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"/switchboard/members/node-3"), "L3N3aXRjaGJvYXJkL21lbWJlcnMvbm9kZS0z");
    }
}
