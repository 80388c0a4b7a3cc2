//! Where a command writes: one process at a time, and never over what it
//! reads (issue 33).
//!
//! - [`Lock`]: an advisory lock on a run directory (`DIR/.alignkit.lock`) or
//!   an appended file (`FILE.lock` beside it). The lock is the kernel's
//!   `flock` on that file, so it ends with its process however the process
//!   ends; the file holds the holder's PID, host and command, for the one
//!   line that refuses a second process. A file left by a process that died
//!   without removing it (SIGKILL, a crash) is unlocked: the next process
//!   takes it over and says whose it was ([`Lock::taken_over`]).
//! - [`ensure_distinct`]: an output is none of the command's inputs, after
//!   following symlinks, and a directory a command replaces holds none.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The lock file of a directory.
pub const DIR_LOCK: &str = ".alignkit.lock";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Another process holds the lock (`holder`: unknown when it had not yet
    /// written its name).
    #[error("{}{} is in use by {}; wait for it or stop it", place.display(), scope_text(scope), holder_text(holder))]
    InUse {
        place: PathBuf,
        scope: Option<String>,
        holder: Option<Holder>,
    },
    #[error("{}: is also an input ({}); choose another output", output.display(), input.display())]
    IsInput { output: PathBuf, input: PathBuf },
    #[error("{}: contains the input {}, which replacing it would delete; choose another output", output.display(), input.display())]
    ContainsInput { output: PathBuf, input: PathBuf },
    #[error("{path}: cannot lock")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn scope_text(scope: &Option<String>) -> String {
    scope.as_ref().map_or(String::new(), |s| format!(" ({s})"))
}

fn holder_text(holder: &Option<Holder>) -> String {
    holder
        .as_ref()
        .map_or("another process".into(), ToString::to_string)
}

/// Who holds a lock, as its lock file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// The command line, its program named without its directory.
    pub command: String,
}

impl Holder {
    /// This process.
    pub fn this_process() -> Self {
        let mut args = std::env::args();
        let program = args.next().map_or_else(String::new, |a| {
            Path::new(&a)
                .file_name()
                .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
        });
        let command = std::iter::once(program)
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            pid: std::process::id(),
            host: host_name(),
            command,
        }
    }
}

impl std::fmt::Display for Holder {
    /// `alignkit sft (PID 1234)`: the program and its subcommand; the host
    /// when it is another one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: Vec<&str> = self.command.split(' ').take(2).collect();
        write!(f, "{} (PID {}", short.join(" "), self.pid)?;
        if self.host != host_name() {
            write!(f, " on {}", self.host)?;
        }
        f.write_str(")")
    }
}

/// This machine's name (Linux), else `HOSTNAME`, else `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Lock files this process holds, removed by [`remove_held`] on an exit
/// that skips destructors.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remove the lock files this process holds: for an exit that runs no
/// destructors (`std::process::exit` from a signal handler). The kernel
/// releases the locks themselves as the process ends.
pub fn remove_held() {
    let held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    for path in held.iter() {
        let _ = std::fs::remove_file(path);
    }
}

/// An advisory lock held until dropped; dropping removes its file.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    /// Holds the `flock`; closed (releasing it) after the file is removed.
    _file: File,
    taken_over: Option<Holder>,
}

impl Lock {
    /// Lock the existing directory `dir` (`dir/.alignkit.lock`).
    pub fn dir(dir: &Path) -> Result<Self, OutputError> {
        Self::acquire(dir.join(DIR_LOCK), dir, None)
    }

    /// Lock `file`, which this process appends to (`FILE.lock` beside it).
    pub fn file(file: &Path) -> Result<Self, OutputError> {
        Self::acquire(suffixed(file, ".lock"), file, None)
    }

    /// Lock `file` for one of the writers that may share it (`FILE.NAME.lock`
    /// beside it): two annotators may append judgments to one file, one
    /// annotator in two processes may not.
    pub fn file_for(file: &Path, name: &str) -> Result<Self, OutputError> {
        let safe: String = name
            .chars()
            .map(|c| {
                let keep = c.is_ascii_alphanumeric() || c == '-' || c == '_';
                if keep { c } else { '_' }
            })
            .collect();
        let path = suffixed(file, &format!(".{safe}.lock"));
        Self::acquire(path, file, Some(format!("annotator {name}")))
    }

    /// The holder of a lock file this lock replaced: a process that ended
    /// without removing it.
    pub fn taken_over(&self) -> Option<&Holder> {
        self.taken_over.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the lock at `path` on behalf of `place`.
    fn acquire(path: PathBuf, place: &Path, scope: Option<String>) -> Result<Self, OutputError> {
        let io = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        // A holder removes its file before it unlocks it: a file locked
        // after that removal is no longer the one at `path`, so open again.
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(OutputError::InUse {
                        place: place.to_path_buf(),
                        scope,
                        holder: holder_of(&mut file),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            if !is_at(&file, &path) {
                continue;
            }
            let taken_over = read_holder(&mut file);
            let text = serde_json::to_string(&Holder::this_process()).expect("a holder serialises");
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(format!("{text}\n").as_bytes()))
                .and_then(|()| file.flush())
                .map_err(io)?;
            HELD.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(path.clone());
            return Ok(Self {
                path,
                _file: file,
                taken_over,
            });
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p != &self.path);
        // Removed while still locked; the file closes (unlocking) after.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `path` with `suffix` appended to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The holder named in a lock file, if it has written its name.
fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The holder of a locked file: it writes its name just after locking, so
/// give it a moment.
fn holder_of(file: &mut File) -> Option<Holder> {
    for _ in 0..50 {
        if let Some(holder) = read_holder(file) {
            return Some(holder);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Whether the open `file` is still the file at `path`.
#[cfg(unix)]
fn is_at(file: &File, path: &Path) -> bool {
    same_inode(file.metadata(), std::fs::metadata(path))
}

#[cfg(not(unix))]
fn is_at(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// What a command does to its output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Writes the file, or files into the directory, at the path.
    Path,
    /// Replaces the directory at the path and everything in it.
    Tree,
}

/// Refuse an `output` that is one of `inputs` (after following symlinks;
/// hard links to one file count as the same), or, when the command
/// replaces it as a [`Writes::Tree`], one that contains an input. An output
/// or input that does not exist yet cannot be one another.
pub fn ensure_distinct(output: &Path, writes: Writes, inputs: &[&Path]) -> Result<(), OutputError> {
    let Some(out) = resolve(output) else {
        return Ok(());
    };
    for &input in inputs {
        let Ok(resolved) = input.canonicalize() else {
            continue;
        };
        if resolved == out || same_file(output, input) {
            return Err(OutputError::IsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
        if writes == Writes::Tree && resolved.starts_with(&out) {
            return Err(OutputError::ContainsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// `path` with its symlinks followed: the path itself, or for one not yet
/// created its nearest existing ancestor's, with the rest appended.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(resolved) = path.canonicalize() {
        return Some(resolved);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(resolve(parent)?.join(name))
}

/// Whether two existing paths are one file (hard links included).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    same_inode(std::fs::metadata(a), std::fs::metadata(b))
}

/// Whether two files, as far as both could be read, are one inode.
#[cfg(unix)]
fn same_inode(
    a: std::io::Result<std::fs::Metadata>,
    b: std::io::Result<std::fs::Metadata>,
) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a, b) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_a: &Path, _b: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_the_file_goes_with_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Lock::dir(dir.path()).unwrap();
        assert!(lock.taken_over().is_none());
        let file = dir.path().join(DIR_LOCK);
        let recorded: Holder =
            serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
        assert_eq!(recorded, Holder::this_process());
        // Another open file description conflicts, even in this process.
        let err = Lock::dir(dir.path()).unwrap_err();
        let want = format!(
            "{} is in use by {}; wait for it or stop it",
            dir.path().display(),
            Holder::this_process()
        );
        assert_eq!(err.to_string(), want);
        assert!(
            err.to_string()
                .contains(&format!("(PID {})", std::process::id()))
        );
        drop(lock);
        assert!(!file.exists());
        let again = Lock::dir(dir.path()).unwrap();
        assert!(again.taken_over().is_none());
    }

    /// A file left behind by a process that ended without removing it is
    /// unlocked: taken over, naming its holder.
    #[test]
    fn a_left_lock_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("out.jsonl");
        let dead = Holder {
            pid: 999_999,
            host: host_name(),
            command: "alignkit generate --out out.jsonl".into(),
        };
        let file = dir.path().join("out.jsonl.lock");
        std::fs::write(&file, serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = Lock::file(&data).unwrap();
        assert_eq!(lock.taken_over(), Some(&dead));
        assert_eq!(lock.path(), file);
        assert_eq!(
            dead.to_string(),
            "alignkit generate (PID 999999)",
            "the program and its subcommand"
        );
        // An empty file (a crash between creating and writing it) names nobody.
        drop(lock);
        std::fs::write(&file, "").unwrap();
        assert!(Lock::file(&data).unwrap().taken_over().is_none());
    }

    #[test]
    fn writers_sharing_a_file_lock_it_each_for_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let judgments = dir.path().join("j.jsonl");
        let ada = Lock::file_for(&judgments, "ada").unwrap();
        let _bob = Lock::file_for(&judgments, "bob").unwrap();
        let _shared = Lock::file(&judgments).unwrap();
        let err = Lock::file_for(&judgments, "ada").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{} (annotator ada) is in use by",
                judgments.display()
            )),
            "{err}"
        );
        assert_eq!(ada.path(), dir.path().join("j.jsonl.ada.lock"));
        // Names are made safe for a file name.
        let odd = Lock::file_for(&judgments, "a/b c").unwrap();
        assert_eq!(odd.path(), dir.path().join("j.jsonl.a_b_c.lock"));
    }

    #[test]
    fn outputs_equal_to_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("cand.jsonl");
        std::fs::write(&input, "x").unwrap();
        std::os::unix::fs::symlink(&input, d.join("link.jsonl")).unwrap();
        std::fs::hard_link(&input, d.join("hard.jsonl")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let dotted = d.join("sub/../cand.jsonl");
        for out in [
            input.clone(),
            d.join("link.jsonl"),
            d.join("hard.jsonl"),
            dotted,
        ] {
            let err = ensure_distinct(&out, Writes::Path, &[&d.join("other"), &input]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: is also an input ({}); choose another output",
                    out.display(),
                    input.display()
                )
            );
        }
        // Not yet written, or elsewhere: fine.
        for out in [d.join("pairs.jsonl"), d.join("new/dir/pairs.jsonl")] {
            ensure_distinct(&out, Writes::Path, &[&input]).unwrap();
        }
        // An input that does not exist is not compared (reading it fails later).
        ensure_distinct(&input, Writes::Path, &[&d.join("missing")]).unwrap();
    }

    #[test]
    fn a_replaced_directory_holds_no_input() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let model = runs.join("sft/final");
        std::fs::create_dir_all(&model).unwrap();
        let err = ensure_distinct(&runs, Writes::Tree, &[&model]).unwrap_err();
        assert!(matches!(err, OutputError::ContainsInput { .. }), "{err}");
        assert!(err.to_string().contains("contains the input"), "{err}");
        // Files written into a directory beside the inputs are fine; the
        // directory itself as an input is not.
        ensure_distinct(&runs, Writes::Path, &[&model]).unwrap();
        ensure_distinct(&model, Writes::Path, &[&model]).unwrap_err();
        ensure_distinct(&runs.join("other"), Writes::Tree, &[&model]).unwrap();
    }
}
