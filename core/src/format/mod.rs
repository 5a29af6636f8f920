//! File formats: parse and write bytes, nothing else.

pub mod gguf;
pub mod patch_file;
#[cfg(feature = "std")]
pub mod peft;
pub mod safetensors;

use alloc::vec::Vec;
#[cfg(feature = "std")]
use std::{io, path::Path};

/// Indices of `items` sorted by `name`, or the positions of two items with the same name (the
/// later one second).
fn sort_by_name<T>(items: &[T], name: impl Fn(&T) -> &str) -> Result<Vec<usize>, (usize, usize)> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Stable, so equal names stay in file order and the later one is reported.
    order.sort_by(|&a, &b| name(&items[a]).cmp(name(&items[b])));
    match order.windows(2).find(|w| name(&items[w[0]]) == name(&items[w[1]])) {
        Some(w) => Err((w[0], w[1])),
        None => Ok(order),
    }
}

fn find_sorted<'a, T>(
    items: &'a [T],
    order: &[usize],
    name: impl Fn(&T) -> &str,
    wanted: &str,
) -> Option<&'a T> {
    let at = order.binary_search_by(|&i| name(&items[i]).cmp(wanted)).ok()?;
    Some(&items[order[at]])
}

/// A whole file as shared bytes: memory-mapped on native, so opening a model copies nothing and
/// pages load on first touch; read into memory on wasm32, which cannot map.
#[cfg(feature = "std")]
fn map_file(path: &Path) -> io::Result<crate::bytes::SharedBytes> {
    Ok(map_file_stamped(path)?.0)
}

/// What identifies a file's contents without reading them: its path, size, times and inode,
/// taken from the handle that was read (not looked up again by name, which may by then be
/// another file). A file written in place changes its change time (`ctime`), which no tool
/// can set back.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub path: String,
    pub size: u64,
    pub modified_ns: u128,
    /// Unix: the inode's change time and number; 0 elsewhere.
    pub changed_ns: i128,
    pub inode: u64,
}

#[cfg(feature = "std")]
impl FileStamp {
    fn of(path: &Path, metadata: &std::fs::Metadata) -> Self {
        let modified = metadata.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        #[cfg(unix)]
        let (changed_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec()), metadata.ino())
        };
        #[cfg(not(unix))]
        let (changed_ns, inode) = (0, 0);
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        Self {
            path: path.display().to_string(),
            size: metadata.len(),
            modified_ns: modified.map_or(0, |d| d.as_nanos()),
            changed_ns,
            inode,
        }
    }
}

/// [`map_file`] and the stamp of the file it mapped.
#[cfg(feature = "std")]
pub fn map_file_stamped(path: &Path) -> io::Result<(crate::bytes::SharedBytes, FileStamp)> {
    let file = std::fs::File::open(path)?;
    let stamp = FileStamp::of(path, &file.metadata()?);
    #[cfg(not(target_arch = "wasm32"))]
    {
        // SAFETY: a mapped file must not change while mapped. Model files are replaced, never
        // edited in place: our writers rename a finished temp file over the old one, which
        // leaves existing maps on the old inode. Files from elsewhere are taken on that contract.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok((crate::bytes::SharedBytes::from_owner(alloc::sync::Arc::new(map)), stamp))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        Ok((crate::bytes::SharedBytes::from_vec(bytes), stamp))
    }
}

/// The text of the file at `path`, which must be UTF-8: bytes that are not are an error giving
/// the line, column and byte offset of the first (a data file in another encoding would
/// otherwise train on replacement characters, or fail without saying where).
#[cfg(feature = "std")]
pub fn read_text(path: &Path) -> Result<alloc::string::String, crate::Error> {
    let bytes =
        std::fs::read(path).map_err(|source| crate::Error::Io { path: path.to_path_buf(), source })?;
    alloc::string::String::from_utf8(bytes).map_err(|e| {
        let (valid, bytes) = (e.utf8_error().valid_up_to(), e.as_bytes());
        let line_start = bytes[..valid].iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        let line = 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count();
        let column = 1 + alloc::string::String::from_utf8_lossy(&bytes[line_start..valid]).chars().count();
        crate::Error::InvalidArgument(alloc::format!(
            "{}: not UTF-8 text: byte 0x{:02x} at line {line}, column {column} (byte offset {valid}); save it as UTF-8",
            path.display(),
            bytes[valid]
        ))
    })
}

/// Whether `name` is one of [`write_atomic`]'s temp files (`.NAME.N.tmp`).
pub fn is_atomic_temp(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    inner
        .rsplit_once('.')
        .is_some_and(|(file, n)| !file.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes a file so that readers see the old contents or the complete new ones, never a torn
/// file (a crash mid-write of a model or adapter must not leave a half file under its name):
/// `write` fills a temp file in the same directory (a rename cannot cross file systems), which
/// is synced to disk before it is renamed over `path`.
#[cfg(feature = "std")]
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut (dyn io::Write + Send)) -> io::Result<()>,
) -> io::Result<()> {
    use std::fs;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path does not name a file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // `create_new` never opens another writer's temp file; on a clash try the next name.
    let mut attempts = 0;
    let (temp, file) = loop {
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", NEXT_TEMP.fetch_add(1, Ordering::Relaxed)));
        let temp = dir.join(temp_name);
        match fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 1000 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        let mut out = io::BufWriter::new(&file);
        write(&mut out)?;
        io::Write::flush(&mut out)?;
        drop(out);
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temp);
    }
    written?;
    // The rename lives in the directory, which POSIX persists only when it is synced itself.
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Where the ignored `write_fuzz_seeds` tests put their files: `$ADAPTKIT_FUZZ_SEEDS/<target>`
/// (`fuzz/README.md` has the command). The files have no extension because the repository
/// ignores `*.gguf`.
/// Writes `path` atomically (as [`write_atomic`]), then makes it readable by its owner only:
/// for secrets (tokens, keys).
#[cfg(feature = "std")]
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), crate::error::Error> {
    let io = |e| crate::error::Error::Io { path: path.to_path_buf(), source: e };
    write_atomic(path, |w| w.write_all(bytes)).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

#[cfg(all(test, feature = "std"))]
fn fuzz_seed_dir(target: &str) -> std::path::PathBuf {
    let root = std::env::var_os("ADAPTKIT_FUZZ_SEEDS").expect("set ADAPTKIT_FUZZ_SEEDS");
    let dir = std::path::Path::new(&root).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
