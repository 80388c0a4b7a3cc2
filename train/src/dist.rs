//! Data parallelism: the one module that talks to burn-collective.
//!
//! A distributed run is `world_size` ranks, each a process (torchrun's
//! conventions: `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, set by `alignkit launch` or a scheduler such as Slurm).
//! Each process is a node of burn-collective's global level; node rank 0's
//! launcher runs the orchestrator at `MASTER_ADDR:MASTER_PORT`, and each
//! process serves its tensors to the others on its own data port
//! (`ALIGNKIT_DATA_PORT`, at `ALIGNKIT_NODE_ADDR`). A process is one rank,
//! or, with `ALIGNKIT_DEVICES` (`alignkit launch --devices`), one rank per
//! listed device: its local peers, threads that burn-collective's local
//! level sums across before the global level (none with one process).
//!
//! What the run skeleton asks of the world: the sum of every rank's
//! gradients before clipping ([`World::sum_tensor`]), sums of a few numbers
//! (token counts, metrics: [`World::sum`]), and whether this rank writes
//! ([`World::writes`]: rank 0 only). Every collective call waits at most the
//! world's timeout; past it, a watchdog says which rank waited for what and
//! ends the process (its last complete checkpoint stays intact: saves are
//! atomic). burn 0.22 replaced burn-collective with backend-level DDP: a burn
//! upgrade changes this file.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

/// How long a rank waits for the others in one collective call before it
/// gives up (`ALIGNKIT_DIST_TIMEOUT`, seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the other ranks wait while rank 0 writes a checkpoint or the
/// final model (an 8B model's save takes minutes on a slow disk).
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The exit status of a rank that lost its peers (EX_TEMPFAIL).
pub const EXIT_PEER_LOST: i32 = 75;

pub const ENV_WORLD_SIZE: &str = "WORLD_SIZE";
pub const ENV_RANK: &str = "RANK";
pub const ENV_LOCAL_RANK: &str = "LOCAL_RANK";
pub const ENV_MASTER_ADDR: &str = "MASTER_ADDR";
pub const ENV_MASTER_PORT: &str = "MASTER_PORT";
pub const ENV_TIMEOUT: &str = "ALIGNKIT_DIST_TIMEOUT";
pub const ENV_NODE_ADDR: &str = "ALIGNKIT_NODE_ADDR";
pub const ENV_DATA_PORT: &str = "ALIGNKIT_DATA_PORT";
/// Set by `alignkit launch`, whose node 0 runs the orchestrator; without it,
/// rank 0 runs one itself.
pub const ENV_LAUNCHED: &str = "ALIGNKIT_LAUNCHED";
/// The devices of this process's local peers, comma-separated (`cpu,cpu`,
/// `cuda:0,cuda:1`): ranks RANK, RANK + 1, ... in one process.
pub const ENV_DEVICES: &str = "ALIGNKIT_DEVICES";

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A missing or malformed launch variable.
    #[error("distributed launch: `{var}`: {message}")]
    Env { var: &'static str, message: String },
    /// burn-collective reported an error (a peer's connection dropped).
    #[error(
        "rank {rank}: {what}: lost the other ranks ({detail}); stopping, the last complete checkpoint is intact"
    )]
    Collective {
        rank: usize,
        what: String,
        detail: String,
    },
    /// The ranks disagree about something they must share.
    #[error("rank {rank}: the ranks disagree on {what}: {detail}")]
    Disagree {
        rank: usize,
        what: String,
        detail: String,
    },
}

/// Where this process stands in a distributed run, as the launch variables
/// say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldSpec {
    /// This process's (first) rank.
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// The devices of this process's local peers ([`ENV_DEVICES`]); empty:
    /// the process is one rank.
    pub devices: Vec<String>,
    pub master_addr: String,
    pub master_port: u16,
    /// This rank's address as the other ranks reach it.
    pub node_addr: String,
    /// The port this rank serves its tensors on.
    pub data_port: u16,
    pub timeout: Duration,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(name: &'static str, text: &str) -> Result<T, DistError> {
    text.trim().parse().map_err(|_| DistError::Env {
        var: name,
        message: format!("`{text}` is not a valid number"),
    })
}

fn required(name: &'static str) -> Result<String, DistError> {
    var(name).ok_or(DistError::Env {
        var: name,
        message: "not set (WORLD_SIZE > 1 needs RANK, MASTER_ADDR and MASTER_PORT)".into(),
    })
}

impl WorldSpec {
    /// The launch variables of this process; `None` for a single process
    /// (`WORLD_SIZE` unset or 1).
    pub fn from_env() -> Result<Option<Self>, DistError> {
        let Some(world) = var(ENV_WORLD_SIZE) else {
            return Ok(None);
        };
        let world_size: usize = parse(ENV_WORLD_SIZE, &world)?;
        if world_size == 0 {
            return Err(DistError::Env {
                var: ENV_WORLD_SIZE,
                message: "must be at least 1".into(),
            });
        }
        if world_size == 1 {
            return Ok(None);
        }
        let rank: usize = parse(ENV_RANK, &required(ENV_RANK)?)?;
        if rank >= world_size {
            return Err(DistError::Env {
                var: ENV_RANK,
                message: format!("{rank} is not below WORLD_SIZE = {world_size}"),
            });
        }
        let local_rank = match var(ENV_LOCAL_RANK) {
            Some(v) => parse(ENV_LOCAL_RANK, &v)?,
            None => rank,
        };
        let devices = local_devices();
        let peers = devices.len().max(1);
        if rank + peers > world_size || !world_size.is_multiple_of(peers) {
            return Err(DistError::Env {
                var: ENV_DEVICES,
                message: format!(
                    "{peers} local peers from RANK = {rank} do not fit WORLD_SIZE = {world_size} (a multiple of the peers per process)"
                ),
            });
        }
        // One process of local peers needs no master.
        let (master_addr, master_port) = match world_size == peers {
            true => (
                var(ENV_MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into()),
                match var(ENV_MASTER_PORT) {
                    Some(p) => parse(ENV_MASTER_PORT, &p)?,
                    None => 0,
                },
            ),
            false => (
                required(ENV_MASTER_ADDR)?,
                parse(ENV_MASTER_PORT, &required(ENV_MASTER_PORT)?)?,
            ),
        };
        let data_port = match var(ENV_DATA_PORT) {
            Some(v) => parse(ENV_DATA_PORT, &v)?,
            None => data_port(master_port, local_rank).ok_or(DistError::Env {
                var: ENV_MASTER_PORT,
                message: format!("{master_port} leaves no room for the data ports above it"),
            })?,
        };
        let node_addr = var(ENV_NODE_ADDR).unwrap_or_else(|| local_addr_towards(&master_addr));
        let timeout = match var(ENV_TIMEOUT) {
            Some(v) => {
                let secs: f64 = parse(ENV_TIMEOUT, &v)?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(DistError::Env {
                        var: ENV_TIMEOUT,
                        message: format!("{v}: must be a positive number of seconds"),
                    });
                }
                Duration::from_secs_f64(secs)
            }
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            devices,
            master_addr,
            master_port,
            node_addr,
            data_port,
            timeout,
        }))
    }
}

impl WorldSpec {
    /// The ranks this process runs (its local peers): 1 without
    /// [`ENV_DEVICES`].
    pub fn peers(&self) -> usize {
        self.devices.len().max(1)
    }

    /// The processes of the run (burn-collective's nodes).
    pub fn processes(&self) -> usize {
        self.world_size / self.peers()
    }
}

/// [`ENV_DEVICES`]: the devices of this process's local peers (none when
/// unset).
pub fn local_devices() -> Vec<String> {
    var(ENV_DEVICES)
        .map(|v| device_list(&v))
        .unwrap_or_default()
}

/// A comma-separated device list (`--devices`, [`ENV_DEVICES`]), each entry
/// trimmed (an empty one stays, for the device parser to refuse).
pub fn device_list(text: &str) -> Vec<String> {
    text.split(',').map(|d| d.trim().to_string()).collect()
}

/// The port local rank `local_rank` serves its tensors on:
/// MASTER_PORT + 1 + LOCAL_RANK (`None` past 65535).
pub fn data_port(master_port: u16, local_rank: usize) -> Option<u16> {
    u16::try_from(master_port as usize + 1 + local_rank).ok()
}

/// This machine's address on the route to `master` (no packet is sent: a
/// UDP socket's `connect` only picks the route); loopback for a local master.
pub fn local_addr_towards(master: &str) -> String {
    let probe = || -> Option<String> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect((master, 9)).ok()?;
        Some(socket.local_addr().ok()?.ip().to_string())
    };
    probe().unwrap_or_else(|| "127.0.0.1".into())
}

/// Rank `rank`'s part of `n` items among `size` ranks (see [`World::share`]).
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let chunk = n.div_ceil(size);
    let start = (rank * chunk).min(n);
    start..(start + chunk).min(n)
}

/// Start burn-collective's global orchestrator on `port` (all interfaces),
/// in a thread of this process, for as long as the process runs (node rank
/// 0's launcher). A port already in use is an error here, before any rank
/// starts.
pub fn start_orchestrator(port: u16) -> Result<(), DistError> {
    quiet_collective_logs();
    check_port_free(port, "the master port (--master-port)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| DistError::Env {
            var: ENV_MASTER_PORT,
            message: format!("cannot start the orchestrator: {e}"),
        })?;
    std::thread::Builder::new()
        .name("alignkit-orchestrator".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .map_err(|e| DistError::Env {
            var: ENV_MASTER_PORT,
            message: format!("cannot start the orchestrator: {e}"),
        })?;
    Ok(())
}

/// An error naming `what` when TCP port `port` cannot be listened on.
pub fn check_port_free(port: u16, what: &str) -> Result<(), DistError> {
    std::net::TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .map_err(|e| DistError::Env {
            var: ENV_MASTER_PORT,
            message: format!(
                "port {port}, {what}, cannot be used: {e}; choose another --master-port"
            ),
        })
}

/// Wait until the master at `addr:port` accepts connections, for at most
/// `timeout` (a node other than 0 starts before or after the master's).
pub fn wait_for_master(addr: &str, port: u16, timeout: Duration) -> Result<(), DistError> {
    use std::net::ToSocketAddrs;
    let unreachable = |why: String| DistError::Env {
        var: ENV_MASTER_ADDR,
        message: format!("cannot reach the master at {addr}:{port}: {why}"),
    };
    let started = Instant::now();
    loop {
        let targets: Vec<_> = (addr, port)
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .collect();
        let last = targets
            .iter()
            .map(|t| std::net::TcpStream::connect_timeout(t, Duration::from_secs(2)).map(drop));
        let mut error = None;
        for attempt in last {
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => error = Some(e),
            }
        }
        if started.elapsed() > timeout {
            let why = error.map_or("no address".into(), |e| e.to_string());
            return Err(unreachable(format!(
                "{why} (for {} s)",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The collective call a rank is waiting in, for the watchdog.
#[derive(Debug)]
struct Waiting {
    what: String,
    since: Instant,
    limit: Duration,
}

#[derive(Debug)]
struct Joined {
    spec: WorldSpec,
    /// This peer's rank.
    rank: usize,
    peer: PeerId,
    waiting: Mutex<Option<Waiting>>,
    /// The next collective call may wait [`SAVE_TIMEOUT`] (rank 0 is saving).
    long_wait: Mutex<bool>,
}

/// The ranks of a run: one process ([`World::single`]) or a joined
/// distributed world. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct World(Option<Arc<Joined>>);

impl World {
    /// One process, no peers.
    pub const fn single() -> Self {
        Self(None)
    }

    /// Join the distributed world `spec` names as its process's local peer
    /// `peer` (0 for a process that is one rank), on backend `B` (the
    /// trainer's inner backend: gradients are summed there). Waits at most
    /// the world's timeout for every rank to join.
    pub fn join<B: Backend>(
        spec: WorldSpec,
        peer: usize,
        device: &B::Device,
    ) -> Result<Self, DistError> {
        quiet_collective_panics();
        quiet_collective_logs();
        let address = |host: &str, port: u16| {
            format!("ws://{host}:{port}")
                .parse()
                .expect("an address parses")
        };
        let mut config = CollectiveConfig::default().with_num_devices(spec.peers());
        if spec.processes() > 1 {
            config = config
                .with_num_nodes(spec.processes() as u32)
                .with_global_address(address(&spec.master_addr, spec.master_port))
                .with_node_address(address(&spec.node_addr, spec.data_port))
                .with_data_service_port(spec.data_port);
        }
        let rank = spec.rank + peer;
        let joined = Arc::new(Joined {
            rank,
            peer: PeerId(rank as u32),
            spec,
            waiting: Mutex::new(None),
            long_wait: Mutex::new(false),
        });
        start_watchdog(Arc::downgrade(&joined));
        let world = Self(Some(joined.clone()));
        let what = match joined.spec.processes() {
            1 => format!("joining the {} local peers", joined.spec.world_size),
            _ => format!(
                "joining the {} ranks at {}:{}",
                joined.spec.world_size, joined.spec.master_addr, joined.spec.master_port
            ),
        };
        world.waiting(&what, || {
            burn_collective::register::<B>(joined.peer, device.clone(), config)
        })?;
        Ok(world)
    }

    /// Whether this is a distributed run.
    pub fn is_distributed(&self) -> bool {
        self.0.is_some()
    }

    pub fn rank(&self) -> usize {
        self.0.as_ref().map_or(0, |j| j.rank)
    }

    pub fn size(&self) -> usize {
        self.0.as_ref().map_or(1, |j| j.spec.world_size)
    }

    /// Whether this rank writes checkpoints, metrics and the final model:
    /// rank 0 (and a single process).
    pub fn writes(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's part of `n` items dealt in order: the `rank`-th of
    /// `size` contiguous chunks of ⌈n / size⌉ (the last ones may be short or
    /// empty).
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        share(n, self.rank(), self.size())
    }

    /// The next collective call waits up to [`SAVE_TIMEOUT`]: rank 0 is
    /// writing a checkpoint or the final model meanwhile.
    pub fn expect_save(&self) {
        if let Some(j) = &self.0 {
            *j.long_wait.lock().unwrap() = true;
        }
    }

    /// The element-wise sum of `tensor` over all ranks (itself for one
    /// process). `what` names the call in a timeout's message.
    pub fn sum_tensor<B: Backend>(
        &self,
        tensor: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, DistError> {
        let Some(j) = &self.0 else {
            return Ok(tensor);
        };
        // The ring all-reduce deals a tensor in one slice per rank: pad a
        // shorter one with zeros.
        let n = tensor.dims()[0];
        let size = self.size();
        let tensor = match n < size {
            true => {
                let zeros: Tensor<B, 1> =
                    Tensor::zeros([size - n], (&tensor.device(), tensor.dtype()));
                Tensor::cat(vec![tensor, zeros], 0)
            }
            false => tensor,
        };
        let summed = self.waiting(what, || {
            burn_collective::all_reduce::<B>(
                j.peer,
                tensor.into_primitive().tensor(),
                ReduceOperation::Sum,
            )
        })?;
        let summed: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(summed));
        Ok(match n < size {
            true => summed.slice(0..n),
            false => summed,
        })
    }

    /// The sums of `values` over all ranks, in f64 (counts and metrics).
    pub fn sum<B: Backend>(
        &self,
        values: &[f64],
        what: &str,
        device: &B::Device,
    ) -> Result<Vec<f64>, DistError> {
        if self.0.is_none() || values.is_empty() {
            return Ok(values.to_vec());
        }
        let data = TensorData::new(values.to_vec(), [values.len()]);
        let tensor = Tensor::<B, 1>::from_data(data, (device, DType::F64));
        let summed = self.sum_tensor(tensor, what)?;
        summed
            .into_data()
            .convert::<f64>()
            .to_vec()
            .map_err(|e| self.error(what, format!("{e:?}")))
    }

    /// Every rank's `values`, by rank (a gather: each rank sums its values
    /// into its own slot of zeros).
    pub fn gather<B: Backend>(
        &self,
        values: &[f64],
        what: &str,
        device: &B::Device,
    ) -> Result<Vec<Vec<f64>>, DistError> {
        let n = values.len();
        let mut slots = vec![0.0; n * self.size()];
        slots[self.rank() * n..(self.rank() + 1) * n].copy_from_slice(values);
        let all = self.sum::<B>(&slots, what, device)?;
        Ok(all.chunks(n.max(1)).map(<[f64]>::to_vec).collect())
    }

    /// Every rank's `values` by rank, when ranks hold different numbers of
    /// them (their lengths are gathered first).
    pub fn gather_ragged<B: Backend>(
        &self,
        values: &[f64],
        what: &str,
        device: &B::Device,
    ) -> Result<Vec<Vec<f64>>, DistError> {
        if self.0.is_none() {
            return Ok(vec![values.to_vec()]);
        }
        let lengths = self.gather::<B>(&[values.len() as f64], what, device)?;
        let longest = lengths.iter().map(|l| l[0] as usize).max().unwrap_or(0);
        let mut padded = values.to_vec();
        padded.resize(longest, 0.0);
        let all = self.gather::<B>(&padded, what, device)?;
        Ok(all
            .into_iter()
            .zip(&lengths)
            .map(|(mut v, l)| {
                v.truncate(l[0] as usize);
                v
            })
            .collect())
    }

    /// Check that every rank holds the same `value` (a step, a fingerprint's
    /// first bytes): an error naming `what` otherwise.
    pub fn agree<B: Backend>(
        &self,
        value: u64,
        what: &str,
        device: &B::Device,
    ) -> Result<(), DistError> {
        if self.0.is_none() {
            return Ok(());
        }
        // Four 16-bit digits: sums of up to 2^37 ranks are exact in f64.
        let digits: Vec<f64> = (0..4)
            .map(|i| ((value >> (16 * i)) & 0xffff) as f64)
            .collect();
        let sums = self.sum::<B>(&digits, what, device)?;
        let size = self.size() as f64;
        match digits.iter().zip(&sums).all(|(d, s)| d * size == *s) {
            true => Ok(()),
            false => Err(DistError::Disagree {
                rank: self.rank(),
                what: what.into(),
                detail: format!("this rank has {value}"),
            }),
        }
    }

    fn error(&self, what: &str, detail: String) -> DistError {
        DistError::Collective {
            rank: self.rank(),
            what: what.into(),
            detail,
        }
    }

    /// Run collective call `call` under the watchdog.
    fn waiting<T>(
        &self,
        what: &str,
        call: impl FnOnce() -> Result<T, burn_collective::CollectiveError>,
    ) -> Result<T, DistError> {
        let Some(j) = &self.0 else {
            unreachable!("collective calls are made in a distributed world only")
        };
        let long = std::mem::take(&mut *j.long_wait.lock().unwrap());
        let limit = match long {
            true => j.spec.timeout.max(SAVE_TIMEOUT),
            false => j.spec.timeout,
        };
        *j.waiting.lock().unwrap() = Some(Waiting {
            what: what.into(),
            since: Instant::now(),
            limit,
        });
        let out = call();
        *j.waiting.lock().unwrap() = None;
        out.map_err(|e| self.error(what, format!("{e:?}")))
    }
}

/// A thread that ends the process when a collective call of `joined` waits
/// past its limit: a peer died or hangs, and waiting longer helps no one.
fn start_watchdog(joined: std::sync::Weak<Joined>) {
    std::thread::Builder::new()
        .name("alignkit-dist-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let Some(j) = joined.upgrade() else {
                    return;
                };
                let late = j.waiting.lock().unwrap().as_ref().and_then(|w| {
                    (w.since.elapsed() > w.limit).then(|| (w.what.clone(), w.limit))
                });
                if let Some((what, limit)) = late {
                    eprintln!(
                        "error: rank {}: {what}: no answer from the other ranks in {} s (a rank died, hangs, or was never started); stopping, the last complete checkpoint is intact",
                        j.rank,
                        limit.as_secs_f64()
                    );
                    std::process::exit(EXIT_PEER_LOST);
                }
            }
        })
        .expect("the watchdog thread starts");
}

/// burn-communication's servers install a global tracing subscriber that
/// prints every tensor transfer (INFO) and every closed connection (ERROR)
/// on standard error, unless one is installed: install one that records
/// nothing. What goes wrong reaches the user as this module's errors.
fn quiet_collective_logs() {
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
}

/// burn-collective's network tasks panic when a peer's connection drops
/// (the call waiting on them is then ended by the watchdog with one line):
/// keep their panic messages and backtraces off the terminal.
fn quiet_collective_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread.name().is_some_and(|n| n.starts_with("tokio-")) {
                return;
            }
            previous(info)
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_shares_everything_and_writes() {
        let w = World::single();
        assert_eq!((w.rank(), w.size(), w.writes()), (0, 1, true));
        assert_eq!(w.share(5), 0..5);
    }

    #[test]
    fn shares_are_contiguous_chunks_covering_every_item() {
        for (n, size) in [(0, 2), (1, 2), (3, 2), (4, 2), (7, 3), (8, 4)] {
            let chunks: Vec<_> = (0..size).map(|rank| share(n, rank, size)).collect();
            assert_eq!(chunks[0].start, 0);
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{n} over {size}: {chunks:?}");
                assert!(pair[0].len() >= pair[1].len(), "{chunks:?}");
            }
            assert_eq!(chunks[size - 1].end, n);
        }
        assert_eq!(share(4, 1, 2), 2..4);
        assert_eq!(share(3, 1, 2), 2..3);
    }
}
