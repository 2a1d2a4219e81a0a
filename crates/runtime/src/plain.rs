//! The folder confidential plaintext lives in while a job runs.
//!
//! Its root is named by the host (`--plain-dir`, default `/dev/shm/cloister-plain`), so it is
//! checked rather than trusted: a local user who pre-created it, or a symlink in its path, would
//! otherwise receive every decrypted input. [`PlainRoot::open`] accepts the root only if every
//! ancestor is a real directory owned by root or by us and writable by nobody else unless
//! sticky (as `/dev/shm` and `/tmp` are), and the root itself is a directory owned by us with no
//! permission for anyone else; it creates the root (mode 0700) when missing. Inside it, each job
//! gets `job-<uuid>` (mode 0700) holding a `.lock` that the job's process keeps locked
//! (`flock`) for its life: whatever remains without a live lock was left by a process that died
//! and is removed by [`PlainRoot::sweep`], which the runtime runs at every start and the platform
//! at its own.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Name of a job folder's lock file.
const LOCK: &str = ".lock";
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A checked plaintext root.
#[derive(Debug)]
pub struct PlainRoot {
    path: PathBuf,
}

/// A job's plaintext folder, locked while this value lives. Dropping it does not remove the
/// folder: call [`JobPlainDir::wipe`].
#[derive(Debug)]
pub struct JobPlainDir {
    path: PathBuf,
    lock: Option<File>,
}

impl PlainRoot {
    /// Checks `root` (creating it when missing) as described in the module docs. With
    /// `require_memory`, it must also be on tmpfs or ramfs: in a confidential VM, a disk-backed
    /// folder may be storage the host can read.
    pub fn open(root: &Path, require_memory: bool) -> Result<Self, String> {
        check_ancestors(root)?;
        match std::fs::symlink_metadata(root) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(root)
                    .map_err(|e| format!("cannot create the plaintext folder {}: {e}", root.display()))?;
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", root.display())),
        }
        let meta =
            std::fs::symlink_metadata(root).map_err(|e| format!("cannot inspect {}: {e}", root.display()))?;
        if !meta.file_type().is_dir() {
            return Err(format!(
                "the plaintext folder {} is not a directory (a symlink or file is refused)",
                root.display()
            ));
        }
        let uid = effective_uid();
        if meta.uid() != uid {
            return Err(format!(
                "the plaintext folder {} belongs to uid {}, not to this process (uid {uid}): refusing to put \
                 plaintext where another user may read it",
                root.display(),
                meta.uid()
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the plaintext folder {} has mode {:04o}: it must give no permission to group or others \
                 (0700)",
                root.display(),
                meta.permissions().mode() & 0o7777
            ));
        }
        if require_memory && !on_memory_fs(root) {
            return Err(format!(
                "the plaintext folder {} is not memory-backed (tmpfs): a hardware TEE keeps plaintext in \
                 its own memory only",
                root.display()
            ));
        }
        Ok(Self {
            path: root.to_owned(),
        })
    }

    /// The root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates and locks the folder of job `uuid` (a leftover of that name is removed first).
    pub fn create_job_dir(&self, uuid: &str) -> Result<JobPlainDir, String> {
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(format!("invalid job id {uuid:?}"));
        }
        let path = self.path.join(format!("job-{uuid}"));
        let _root = self.lock_root()?;
        if std::fs::symlink_metadata(&path).is_ok() {
            wipe(&path);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create the plaintext folder: {e}"))?;
        let lock = create_private(&path.join(LOCK))
            .and_then(|file| flock(&file, true).map(|()| file))
            .map_err(|e| format!("cannot lock the plaintext folder: {e}"))?;
        Ok(JobPlainDir {
            path,
            lock: Some(lock),
        })
    }

    /// Removes every job folder no live process holds: plaintext left by a runtime that was
    /// killed. Returns how many were removed.
    pub fn sweep(&self) -> usize {
        let Ok(_root) = self.lock_root() else {
            return 0;
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.path).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("job-") {
                continue;
            }
            let path = entry.path();
            // Folders are created and locked under the root lock, which we hold: a folder
            // without a lock file, or whose lock is free, has no live owner.
            let alive = File::open(path.join(LOCK))
                .ok()
                .is_some_and(|file| flock(&file, false).is_err());
            if !alive {
                wipe(&path);
                removed += 1;
            }
        }
        removed
    }

    /// Locks the root directory itself (held while job folders are created or swept).
    fn lock_root(&self) -> Result<File, String> {
        let file = File::open(&self.path).map_err(|e| format!("cannot lock the plaintext folder: {e}"))?;
        flock(&file, true).map_err(|e| format!("cannot lock the plaintext folder: {e}"))?;
        Ok(file)
    }
}

impl JobPlainDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the folder and everything in it (see [`wipe`]), then releases the lock.
    pub fn wipe(mut self) {
        wipe(&self.path);
        self.lock.take();
    }
}

/// Every ancestor of `root` must be a real directory owned by root or by us, writable by
/// nobody else unless sticky: otherwise someone else could replace the path under us.
fn check_ancestors(root: &Path) -> Result<(), String> {
    if !root.is_absolute() {
        return Err(format!(
            "the plaintext folder {} must be an absolute path",
            root.display()
        ));
    }
    let uid = effective_uid();
    let mut path = PathBuf::new();
    let components: Vec<Component<'_>> = root.components().collect();
    let Some((_, ancestors)) = components.split_last() else {
        return Err("the plaintext folder cannot be /".into());
    };
    for component in ancestors {
        match component {
            Component::RootDir => path.push("/"),
            Component::Normal(part) => path.push(part),
            _ => {
                return Err(format!(
                    "the plaintext folder {} must not contain . or .. components",
                    root.display()
                ));
            }
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
        if !meta.file_type().is_dir() {
            return Err(format!(
                "{} (in the plaintext folder's path) is not a directory: symlinks are refused",
                path.display()
            ));
        }
        if meta.uid() != 0 && meta.uid() != uid {
            return Err(format!(
                "{} (in the plaintext folder's path) belongs to uid {}: it could be replaced under us",
                path.display(),
                meta.uid()
            ));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "{} (in the plaintext folder's path) has mode {:04o}: writable by others without the \
                 sticky bit",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    if matches!(components.last(), Some(Component::Normal(_))) {
        Ok(())
    } else {
        Err(format!(
            "the plaintext folder {} must end in a folder name",
            root.display()
        ))
    }
}

#[allow(unsafe_code)] // a libc call: see its SAFETY comment
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// An exclusive lock, without waiting when `wait` is false.
#[allow(unsafe_code)] // a libc call: see its SAFETY comment
fn flock(file: &File, wait: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `path` is on a memory-backed file system (tmpfs, ramfs).
#[allow(unsafe_code)] // a libc call: see its SAFETY comment
pub fn on_memory_fs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs(2) writes into the buffer we own; it is read only when the call succeeds.
    let ok = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call above.
    // `f_type` is i64 on x86-64 but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let kind = ok.then(|| i64::from(unsafe { stat.assume_init() }.f_type));
    matches!(kind, Some(TMPFS_MAGIC | RAMFS_MAGIC))
}

/// Removes a plaintext tree. On a disk-backed file system every file is overwritten with zeros
/// first, so its blocks do not keep plaintext; on tmpfs the freed pages are zeroed by the kernel
/// before anyone else gets them, and overwriting would only cost time.
pub fn wipe(dir: &Path) {
    if !on_memory_fs(dir) {
        zero_files(dir);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn zero_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            zero_files(&entry.path());
        } else if kind.is_file() {
            zero_file(&entry.path());
        }
    }
}

fn zero_file(path: &Path) {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let zeros = vec![0u8; (len.min(1 << 20)) as usize];
    let _ = file.seek(SeekFrom::Start(0));
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        if file.write_all(&zeros[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_tempdir() -> tempfile::TempDir {
        // tempfile makes 0700 folders under /tmp (sticky, root-owned).
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_fresh_root_is_created_private_and_jobs_are_locked() {
        let tmp = private_tempdir();
        let root = PlainRoot::open(&tmp.path().join("plain"), false).unwrap();
        let mode = std::fs::metadata(root.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let job = root
            .create_job_dir("0193a5e2-7c4e-7b8a-9f00-aabbccddeeff")
            .unwrap();
        std::fs::write(job.path().join("secret"), b"plaintext").unwrap();
        // A live job survives a sweep; its folder is private.
        assert_eq!(root.sweep(), 0);
        assert!(job.path().join("secret").exists());
        let mode = std::fs::metadata(job.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let path = job.path().to_owned();
        job.wipe();
        assert!(!path.exists());
    }

    #[test]
    fn leftovers_of_dead_jobs_are_swept() {
        let tmp = private_tempdir();
        let root = PlainRoot::open(&tmp.path().join("plain"), false).unwrap();
        let job = root.create_job_dir("1111").unwrap();
        let left = job.path().to_owned();
        std::fs::write(left.join("input"), b"plaintext").unwrap();
        // The process died: its lock is gone (the descriptor closed), the folder stayed.
        drop(job);
        std::fs::create_dir(root.path().join("job-2222")).unwrap();
        std::fs::write(root.path().join("job-2222/x"), b"plaintext").unwrap();
        std::fs::create_dir(root.path().join("unrelated")).unwrap();
        assert_eq!(root.sweep(), 2);
        assert!(!left.exists());
        assert!(!root.path().join("job-2222").exists());
        assert!(root.path().join("unrelated").exists());
    }

    #[test]
    fn a_root_open_to_others_or_not_ours_is_refused() {
        let tmp = private_tempdir();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = PlainRoot::open(&shared, false).unwrap_err();
        assert!(err.contains("mode 0777"), "{err}");
        // Below a folder writable by others without the sticky bit: refused.
        let err = PlainRoot::open(&shared.join("plain"), false).unwrap_err();
        assert!(err.contains("without the sticky bit"), "{err}");
        // A symlink to a private folder: refused.
        let private = tmp.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&private, tmp.path().join("link")).unwrap();
        let err = PlainRoot::open(&tmp.path().join("link"), false).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        let err = PlainRoot::open(&tmp.path().join("link/plain"), false).unwrap_err();
        assert!(err.contains("symlinks are refused"), "{err}");
        assert!(PlainRoot::open(Path::new("relative/plain"), false).is_err());
        assert!(PlainRoot::open(&tmp.path().join("a/../b"), false).is_err());
    }

    #[test]
    fn a_root_owned_by_another_user_is_refused() {
        if effective_uid() != 0 {
            // Only root can make a folder another user owns; CI runs as root.
            eprintln!("SKIPPED: not root, cannot create a folder owned by another user");
            return;
        }
        let tmp = private_tempdir();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = PlainRoot::open(&theirs, false).unwrap_err();
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn hardware_tees_need_memory_backed_plaintext() {
        let tmp = private_tempdir();
        if !on_memory_fs(tmp.path()) {
            let err = PlainRoot::open(&tmp.path().join("plain"), true).unwrap_err();
            assert!(err.contains("not memory-backed"), "{err}");
        }
        if Path::new("/dev/shm").is_dir() {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            PlainRoot::open(&dir.path().join("plain"), true).unwrap();
        }
        assert!(!on_memory_fs(Path::new("/proc/self")));
    }

    #[test]
    fn wipe_removes_everything() {
        let tmp = private_tempdir();
        let dir = tmp.path().join("p");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"secret").unwrap();
        wipe(&dir);
        assert!(!dir.exists());
    }
}
