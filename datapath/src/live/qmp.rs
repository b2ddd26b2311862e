//! A QMP client (QEMU Machine Protocol, `docs/interop/qmp-spec`) over a unix socket, with typed
//! arguments for the block-layer commands the live source sends. Replies are matched by `id`;
//! events that arrive between them are kept until asked for (`BLOCK_EXPORT_DELETED` may come
//! before the reply to `block-export-del`). Lines are bounded and the socket has a timeout: a
//! broken QEMU gives an error, not a hang.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest line accepted from QEMU (`query-named-block-nodes` of a big graph stays far below).
const MAX_LINE: u64 = 16 << 20;

/// Failures talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: {0}")]
    Protocol(String),
    /// QEMU refused a command.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: no {event} event within {seconds} s")]
    NoEvent { event: String, seconds: u64 },
}

/// A connected QMP session (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
    next_id: u64,
    timeout: Duration,
}

/// One action of a `transaction`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum Action {
    BlockDirtyBitmapAdd(BitmapAdd),
    BlockDirtyBitmapDisable(BitmapRef),
    BlockDirtyBitmapEnable(BitmapRef),
    BlockDirtyBitmapMerge(BitmapMerge),
    BlockdevBackup(BlockdevBackup),
}

/// `block-dirty-bitmap-add`.
#[derive(Debug, Clone, Serialize)]
pub struct BitmapAdd {
    pub node: String,
    pub name: String,
    pub granularity: u32,
    pub persistent: bool,
}

/// A bitmap by node and name.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BitmapRef {
    pub node: String,
    pub name: String,
}

/// `block-dirty-bitmap-merge`: `bitmaps` (never empty: QEMU 10.0 crashes on an empty list)
/// into `target`, all on `node`.
#[derive(Debug, Clone, Serialize)]
pub struct BitmapMerge {
    pub node: String,
    pub target: String,
    pub bitmaps: Vec<String>,
}

/// `blockdev-backup` with `sync: none`: the fleecing job.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevBackup {
    pub job_id: String,
    pub device: String,
    pub target: String,
    pub sync: String,
    pub filter_node_name: String,
}

/// A node as `query-named-block-nodes` lists it (the fields used).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NamedNode {
    pub node_name: String,
    #[serde(default)]
    pub dirty_bitmaps: Vec<DirtyBitmap>,
    pub image: ImageInfo,
    /// Its block driver (`qcow2`, `file`, `throttle`, …).
    #[serde(default)]
    pub drv: String,
    /// Opened read-only (a backing image, a read-only disk).
    #[serde(default)]
    pub ro: bool,
    /// The file name of the image under it.
    #[serde(default)]
    pub file: String,
}

/// Image formats: a node with one of these drivers is what a guest sees; the node holding its
/// file under it is the container's bytes.
const FORMAT_DRIVERS: &[&str] = &[
    "qcow2",
    "qcow",
    "vhdx",
    "vpc",
    "vmdk",
    "vdi",
    "qed",
    "parallels",
    "raw",
    "luks",
];

/// Drivers that reach storage (a file, a device, a network disk): under a format node such a
/// node holds the image's container.
const PROTOCOL_DRIVERS: &[&str] = &[
    "file",
    "host_device",
    "host_cdrom",
    "io_uring",
    "nbd",
    "iscsi",
    "rbd",
    "ssh",
    "nfs",
    "gluster",
    "http",
    "https",
    "nvme",
];

impl NamedNode {
    /// Why this node is not the disk the guest writes, given every node QEMU has: it is
    /// read-only (a backing image: no write reaches it, its bitmaps stay empty), or it is the
    /// file under a format node (its bytes are the container, not the disk). `None`: a node
    /// the guest writes through.
    pub fn not_the_guests_disk(&self, nodes: &[NamedNode]) -> Option<String> {
        if self.ro {
            return Some(
                "read-only (a backing image, or a read-only disk): the guest's writes never \
                 reach it; give the node it writes to (the top of its chain)"
                    .to_string(),
            );
        }
        if !PROTOCOL_DRIVERS.contains(&self.drv.as_str()) || self.file.is_empty() {
            return None;
        }
        let format = nodes.iter().find(|n| {
            n.node_name != self.node_name
                && n.file == self.file
                && FORMAT_DRIVERS.contains(&n.drv.as_str())
        })?;
        Some(format!(
            "the file (driver {}) under format node {} ({}): it holds the {} container, not \
             the disk the guest sees; give --node {}",
            self.drv, format.node_name, format.drv, format.drv, format.node_name
        ))
    }
}

/// The image under a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub virtual_size: u64,
}

/// A dirty bitmap's state.
#[derive(Debug, Clone, Deserialize)]
pub struct DirtyBitmap {
    /// Empty for QEMU's own anonymous bitmaps (a backup job's).
    #[serde(default)]
    pub name: String,
    pub recording: bool,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub persistent: bool,
    #[serde(default)]
    pub inconsistent: bool,
    pub granularity: u64,
    /// Dirty bytes.
    pub count: u64,
}

impl Qmp {
    /// Connect to the monitor socket at `path`, read the greeting and leave negotiation mode.
    /// Every later reply must come within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            next_id: 1,
            timeout,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "{}: not a QMP monitor (greeting {greeting})",
                path.display()
            )));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(QmpError::Protocol("QEMU closed the monitor".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(QmpError::Protocol(format!(
                "a line of {} bytes without an end",
                line.len()
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|e| QmpError::Protocol(format!("a line that is not JSON: {e}")))
    }

    /// Run `command` with `arguments`; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: impl Serialize) -> Result<Value, QmpError> {
        let id = format!("drplane-{}", self.next_id);
        self.next_id += 1;
        let mut request = serde_json::to_vec(&json!({
            "execute": command,
            "arguments": arguments,
            "id": id,
        }))
        .map_err(|e| QmpError::Protocol(e.to_string()))?;
        request.push(b'\n');
        self.writer.write_all(&request)?;
        loop {
            let message = self.read_message()?;
            if message.get("event").is_some() {
                self.events.push_back(message);
                continue;
            }
            if message.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            if let Some(error) = message.get("error") {
                let field = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Ok(message.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// A `transaction` of `actions`: all happen at one instant, or none.
    pub fn transaction(&mut self, actions: &[Action]) -> Result<(), QmpError> {
        self.execute("transaction", json!({ "actions": actions }))
            .map(drop)
    }

    /// Wait for event `name` whose `data` satisfies `matches` (events already received count).
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let is_it = |e: &Value| {
                e.get("event").and_then(Value::as_str) == Some(name)
                    && matches(e.get("data").unwrap_or(&Value::Null))
            };
            if let Some(at) = self.events.iter().position(is_it) {
                return Ok(self.events.remove(at).expect("found"));
            }
            if Instant::now() >= deadline {
                return Err(QmpError::NoEvent {
                    event: name.into(),
                    seconds: self.timeout.as_secs(),
                });
            }
            let message = match self.read_message() {
                Ok(m) => m,
                Err(QmpError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if message.get("event").is_some() {
                // Job status noise is of no use later; keep the rest.
                if message.get("event").and_then(Value::as_str) != Some("JOB_STATUS_CHANGE") {
                    self.events.push_back(message);
                }
            }
        }
    }

    /// Every named block node.
    pub fn named_nodes(&mut self) -> Result<Vec<NamedNode>, QmpError> {
        let value = self.execute("query-named-block-nodes", json!({ "flat": true }))?;
        serde_json::from_value(value)
            .map_err(|e| QmpError::Protocol(format!("query-named-block-nodes: {e}")))
    }

    /// Forget events received so far.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_node_the_guest_writes_through_is_its_disk() {
        let node = |name: &str, drv: &str, ro: bool, file: &str| NamedNode {
            node_name: name.into(),
            dirty_bitmaps: Vec::new(),
            image: ImageInfo { virtual_size: 1 },
            drv: drv.into(),
            ro,
            file: file.into(),
        };
        let nodes = [
            node("disk0", "qcow2", false, "/v/top.qcow2"),
            node("file0", "file", false, "/v/top.qcow2"),
            node("base", "qcow2", true, "/v/base.qcow2"),
            node("base-file", "file", true, "/v/base.qcow2"),
            node("thr0", "throttle", false, "/v/top.qcow2"),
            node("dev", "host_device", false, "/dev/sdb"),
        ];
        let why = |name: &str| {
            let n = nodes.iter().find(|n| n.node_name == name).unwrap();
            n.not_the_guests_disk(&nodes)
        };
        assert_eq!(why("disk0"), None);
        assert_eq!(
            why("thr0"),
            None,
            "a filter above the format node passes writes on"
        );
        assert_eq!(why("dev"), None, "a device the guest uses directly");
        let file = why("file0").unwrap();
        assert!(file.contains("under format node disk0 (qcow2)"), "{file}");
        assert!(file.contains("give --node disk0"), "{file}");
        assert!(why("base").unwrap().contains("read-only"));
        assert!(why("base-file").unwrap().contains("read-only"));
        // As QEMU lists them (extra fields ignored).
        let listed: Vec<NamedNode> = serde_json::from_value(json!([
            {"node-name": "f0", "drv": "file", "ro": false, "file": "/d.qcow2",
             "image": {"virtual-size": 197120, "filename": "/d.qcow2"}, "iops": 0},
            {"node-name": "disk0", "drv": "qcow2", "ro": false, "file": "/d.qcow2",
             "image": {"virtual-size": 67108864}}
        ]))
        .unwrap();
        assert!(listed[0].not_the_guests_disk(&listed).is_some());
        assert!(listed[1].not_the_guests_disk(&listed).is_none());
    }

    #[test]
    fn transaction_actions_are_written_as_qemu_spells_them() {
        let actions = [
            Action::BlockDirtyBitmapAdd(BitmapAdd {
                node: "disk0".into(),
                name: "b2".into(),
                granularity: 65536,
                persistent: false,
            }),
            Action::BlockDirtyBitmapDisable(BitmapRef {
                node: "disk0".into(),
                name: "b1".into(),
            }),
            Action::BlockdevBackup(BlockdevBackup {
                job_id: "fl-job".into(),
                device: "disk0".into(),
                target: "fl-tmp".into(),
                sync: "none".into(),
                filter_node_name: "fl-cbw".into(),
            }),
        ];
        let text = serde_json::to_value(actions).unwrap();
        assert_eq!(
            text,
            json!([
                {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b2", "granularity": 65536, "persistent": false}},
                {"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "b1"}},
                {"type": "blockdev-backup", "data": {"job-id": "fl-job", "device": "disk0", "target": "fl-tmp", "sync": "none", "filter-node-name": "fl-cbw"}}
            ])
        );
    }
}
