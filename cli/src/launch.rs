//! `alignkit launch`: the ranks of a data-parallel run, with torchrun's
//! conventions. This process starts `--nproc-per-node` copies of the trainer
//! command with `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and
//! `MASTER_PORT` set (node rank 0's launcher also runs the collective's
//! orchestrator), watches them, and when one fails stops the others and says
//! which rank failed and how, in one line.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alignkit_train::dist::{self, ENV_DATA_PORT, ENV_NODE_ADDR, ENV_TIMEOUT};
use anyhow::{Context, Result, bail};
use clap::Args;

/// The trainer commands a launch runs.
const TRAINERS: &[&str] = &["sft", "dpo", "reward", "grpo", "rloo", "ppo"];
/// How long the other ranks get to end after one failed, before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Ranks (processes) on this machine, one per device.
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Machines taking part.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's place among them (0 runs the orchestrator).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, as every machine reaches it.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of node 0's orchestrator; each rank of a machine serves its
    /// tensors on the ports above it (MASTER_PORT + 1 + LOCAL_RANK).
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// Seconds a rank waits for the others in one collective call (and a
    /// node for the master) before it stops with an error.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Local peers instead of processes: one rank per listed device
    /// (`cpu,cpu`, `cuda:0,cuda:1`), each a thread of one process per
    /// machine, summing through burn-collective's local level.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// The trainer command and its flags, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn run(args: LaunchArgs) -> Result<()> {
    let plan = Plan::check(&args)?;
    // One process of local peers needs no orchestrator.
    if plan.world_size > plan.peers {
        match args.node_rank {
            0 => dist::start_orchestrator(args.master_port)?,
            _ => dist::wait_for_master(&args.master_addr, args.master_port, plan.timeout)?,
        }
    }
    // Ctrl-C or SIGTERM to the launcher is passed on to every rank, once per
    // signal (the ranks are in their own process group, so a terminal's
    // Ctrl-C reaches them only this way): they agree on a stop, save, and
    // end; a second one ends them as it ends one process.
    let stop = Arc::new(AtomicUsize::new(0));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            stop.fetch_add(1, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut ranks = Vec::new();
    for local_rank in 0..args.nproc_per_node {
        let rank = (args.node_rank * args.nproc_per_node + local_rank) * plan.peers;
        let child = plan.spawn(&args, rank, local_rank).inspect_err(|_| {
            stop_all(&mut ranks, libc::SIGKILL);
        })?;
        ranks.push(Rank {
            rank,
            child,
            status: None,
        });
    }
    supervise(&mut ranks, &stop)
}

/// A launch checked before any rank starts.
struct Plan {
    world_size: usize,
    /// Ranks per process: the `--devices` listed, else 1.
    peers: usize,
    node_addr: String,
    timeout: Duration,
    threads: Option<usize>,
}

impl Plan {
    fn check(args: &LaunchArgs) -> Result<Self> {
        if args.nproc_per_node == 0 || args.nnodes == 0 {
            bail!("--nproc-per-node and --nnodes must be at least 1");
        }
        if args.node_rank >= args.nnodes {
            bail!(
                "--node-rank {} is not below --nnodes {}",
                args.node_rank,
                args.nnodes
            );
        }
        if !(args.timeout > 0.0 && args.timeout.is_finite()) {
            bail!(
                "--timeout {}: must be a positive number of seconds",
                args.timeout
            );
        }
        let name = args.command[0].as_str();
        if !TRAINERS.contains(&name)
            || (name == "reward" && args.command.get(1).map(String::as_str) != Some("train"))
        {
            bail!(
                "`alignkit launch` runs a trainer: sft, dpo, reward train, grpo, rloo or ppo (got `{}`)",
                args.command.join(" ")
            );
        }
        let peers = match &args.devices {
            None => 1,
            Some(list) => check_devices(list, args.nproc_per_node)?,
        };
        if args.nnodes * args.nproc_per_node > 1 {
            for local_rank in 0..args.nproc_per_node {
                let port = data_port(args, local_rank)?;
                dist::check_port_free(port, &format!("local rank {local_rank}'s data port"))?;
            }
        }
        let node_addr = match args.nnodes {
            1 => "127.0.0.1".to_string(),
            _ => dist::local_addr_towards(&args.master_addr),
        };
        // One BLAS/rayon pool per rank: the machine's cores shared out, as
        // torchrun sets OMP_NUM_THREADS.
        let threads = std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / args.nproc_per_node).max(1)
        });
        Ok(Self {
            world_size: args.nnodes * args.nproc_per_node * peers,
            peers,
            node_addr,
            timeout: Duration::from_secs_f64(args.timeout),
            threads,
        })
    }

    fn spawn(&self, args: &LaunchArgs, rank: usize, local_rank: usize) -> Result<Child> {
        let exe = std::env::current_exe().context("finding the alignkit executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(&args.command)
            .env(dist::ENV_WORLD_SIZE, self.world_size.to_string())
            .env(dist::ENV_RANK, rank.to_string())
            .env(dist::ENV_LOCAL_RANK, local_rank.to_string())
            .env(
                "LOCAL_WORLD_SIZE",
                (args.nproc_per_node * self.peers).to_string(),
            )
            .env("GROUP_RANK", args.node_rank.to_string())
            .env(dist::ENV_MASTER_ADDR, &args.master_addr)
            .env(dist::ENV_MASTER_PORT, args.master_port.to_string())
            .env(ENV_NODE_ADDR, &self.node_addr)
            .env(ENV_DATA_PORT, data_port(args, local_rank)?.to_string())
            .env(ENV_TIMEOUT, args.timeout.to_string())
            .env(dist::ENV_LAUNCHED, "1")
            .env(dist::ENV_DEVICES, args.devices.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: prctl(2) is async-signal-safe; it runs in the child between
        // fork and exec. A rank ends when the launcher dies, whatever killed
        // it: no process is left behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if let Some(threads) = self.threads {
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
        }
        if rank != 0 {
            // Rank 0 reports; the others' errors still reach stderr.
            cmd.stdout(Stdio::null());
        }
        cmd.spawn().with_context(|| format!("starting rank {rank}"))
    }
}

/// The local peers `--devices` lists: how many (one backend, and one
/// process per machine).
fn check_devices(list: &str, nproc_per_node: usize) -> Result<usize> {
    if nproc_per_node != 1 {
        bail!(
            "--devices puts this machine's ranks in one process, one per device: leave out --nproc-per-node {nproc_per_node}"
        );
    }
    let specs = crate::backend::peer_devices(&dist::device_list(list))
        .map_err(|e| anyhow::anyhow!("--devices {e}"))?;
    Ok(specs.len())
}

fn data_port(args: &LaunchArgs, local_rank: usize) -> Result<u16> {
    dist::data_port(args.master_port, local_rank).ok_or_else(|| {
        anyhow::anyhow!(
            "--master-port {} leaves no room for {} data ports above it",
            args.master_port,
            args.nproc_per_node
        )
    })
}

struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// Wait for every rank. The first that fails ends the others (SIGTERM,
/// then SIGKILL after [`GRACE`]), and the launch fails naming it.
fn supervise(ranks: &mut [Rank], stop: &AtomicUsize) -> Result<()> {
    let failed = |r: &Rank, stop: &AtomicUsize| {
        r.status
            .is_some_and(|s| !(s.success() || (stop.load(Ordering::SeqCst) > 0 && interrupted(s))))
    };
    let mut forwarded = 0;
    loop {
        let requested = stop.load(Ordering::SeqCst);
        while forwarded < requested {
            stop_all(ranks, libc::SIGINT);
            forwarded += 1;
        }
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            r.status = r.child.try_wait().context("waiting for a rank")?;
        }
        if ranks.iter().any(|r| failed(r, stop)) {
            // The others notice a dead peer within milliseconds: wait a
            // moment, then name the cause (a rank killed by a signal before
            // one that lost its peers).
            std::thread::sleep(Duration::from_millis(500));
            for r in ranks.iter_mut() {
                running(r);
            }
            let cause = ranks
                .iter()
                .filter(|r| failed(r, stop))
                .min_by_key(|r| r.status.and_then(|s| s.code()).is_some())
                .expect("a failed rank");
            let status = cause.status.expect("ended");
            let failed = format!(
                "rank {} (pid {}) {}",
                cause.rank,
                cause.child.id(),
                describe(status)
            );
            stop_all(ranks, libc::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline && ranks.iter_mut().any(running) {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop_all(ranks, libc::SIGKILL);
            bail!(
                "{failed}; the other ranks were stopped (the last complete checkpoint is intact)"
            );
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            if ranks.iter().any(|r| r.status.is_some_and(interrupted)) {
                std::process::exit(crate::train_cli::EXIT_INTERRUPTED);
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn running(r: &mut Rank) -> bool {
    if r.status.is_none() {
        r.status = r.child.try_wait().ok().flatten();
    }
    r.status.is_none()
}

fn interrupted(status: ExitStatus) -> bool {
    status.code() == Some(crate::train_cli::EXIT_INTERRUPTED)
}

/// Send `signal` to every rank still running.
fn stop_all(ranks: &mut [Rank], signal: i32) {
    for r in ranks.iter_mut() {
        if running(r) {
            // SAFETY: kill(2) on the pid of a child this process started and
            // has not reaped (try_wait saw it running).
            unsafe {
                libc::kill(r.child.id() as i32, signal);
            }
        }
    }
    if signal == libc::SIGKILL {
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            r.status = r.child.wait().ok();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}{}", signal_name(signal)),
        _ => format!("ended ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}
