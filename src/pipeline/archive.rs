//! Packs a source tree into a deterministic gzipped tarball: sorted entries,
//! zero mtimes, root ownership, normalised modes. The same tree always gives
//! the same bytes, so the archive's digest names it in the bucket and an
//! unchanged source is never uploaded twice.
//!
//! What is sent follows gcloud: `.gcloudignore` when present (gitignore
//! syntax, `#!include:FILE` pulls in another file's rules), otherwise the
//! rules of `.gitignore` and of `.dockerignore` (with Docker's semantics,
//! `super::dockerignore`). Version-control directories are
//! never sent. Symlinks that leave the tree, device files, fifos and sockets
//! are refused, never followed; so is a tree over the size limit.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest, Sha256};

use super::dockerignore::DockerIgnore;

/// A packed source.
#[derive(Debug, Clone)]
pub struct SourceArchive {
    /// The compressed bytes, in an unnamed temporary file: a large source
    /// never sits in memory, and the file goes away with the last handle
    /// (or the process).
    pub blob: Blob,
    /// Hex SHA-256 of the compressed bytes.
    pub sha256: String,
    pub files: usize,
    /// Uncompressed size of the regular files sent.
    pub source_bytes: u64,
    /// Which ignore file decided what was left out, if any.
    pub ignore_file: Option<&'static str>,
}

/// Uncompressed bytes sent at most, by default. Cloud Build documents no
/// source size limit of its own; a source this large is almost always
/// build output or dependencies that an ignore file should leave out.
pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 500 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("symlink {path} points outside the source tree (to {target}); it is not followed")]
    SymlinkEscape { path: String, target: String },
    #[error("{path} is a {kind}, which cannot be part of a source archive")]
    SpecialFile { path: String, kind: &'static str },
    #[error("{path} has a path component that leaves the source tree")]
    PathEscape { path: String },
    #[error("the source is {} MiB, over the {} MiB limit; largest files: {}", total / (1024 * 1024), limit / (1024 * 1024), largest.iter().map(|(p, s)| format!("{p} ({} MiB)", s / (1024 * 1024))).collect::<Vec<_>>().join(", "))]
    TooLarge {
        total: u64,
        limit: u64,
        largest: Vec<(String, u64)>,
    },
    #[error(".dockerignore line {line}: invalid pattern")]
    BadDockerignore {
        line: usize,
        #[source]
        source: super::dockerignore::BadPattern,
    },
    #[error("{file} is {size} bytes and {lines} lines; ignore files may have at most {} bytes and {} lines", MAX_IGNORE_BYTES, MAX_IGNORE_LINES)]
    IgnoreFileTooLarge {
        file: String,
        size: u64,
        lines: usize,
    },
    #[error("{file} line {line} includes {target:?}, which is not a file inside the source tree")]
    BadInclude {
        file: String,
        line: usize,
        target: String,
    },
    #[error("{file} line {line}: invalid pattern")]
    BadPattern {
        file: String,
        line: usize,
        #[source]
        source: ignore::Error,
    },
}

/// Ignore files (and their includes) larger than this are refused before
/// they are read: their rules are held in memory whole.
pub const MAX_IGNORE_BYTES: u64 = 1024 * 1024;
pub const MAX_IGNORE_LINES: usize = 20_000;

/// The text of an ignore file at `rel` under `root`: a regular file inside
/// the tree (a symlink may not lead out of it), within the size limits.
fn read_ignore_file(root: &Path, rel: &str) -> Result<String, ArchiveError> {
    let path = root.join(rel);
    let real_root = fs::canonicalize(root).map_err(io_err(root))?;
    let real = fs::canonicalize(&path).map_err(io_err(&path))?;
    if !real.starts_with(&real_root) {
        return Err(ArchiveError::SymlinkEscape {
            path: rel.to_string(),
            target: real.display().to_string(),
        });
    }
    let size = fs::metadata(&real).map_err(io_err(&path))?.len();
    if size > MAX_IGNORE_BYTES {
        return Err(ArchiveError::IgnoreFileTooLarge {
            file: rel.to_string(),
            size,
            lines: 0,
        });
    }
    let mut text = String::new();
    io::Read::read_to_string(
        &mut io::Read::take(
            fs::File::open(&real).map_err(io_err(&path))?,
            MAX_IGNORE_BYTES + 1,
        ),
        &mut text,
    )
    .map_err(io_err(&path))?;
    let lines = text.lines().count();
    if text.len() as u64 > MAX_IGNORE_BYTES || lines > MAX_IGNORE_LINES {
        return Err(ArchiveError::IgnoreFileTooLarge {
            file: rel.to_string(),
            size: text.len() as u64,
            lines,
        });
    }
    Ok(text)
}

/// Directories never sent to Cloud Build.
const ALWAYS_SKIPPED: &[&str] = &[".git", ".hg", ".svn"];

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What decides which files are sent.
struct Rules {
    /// `.gcloudignore` (with its includes), or `.gitignore`.
    git: Gitignore,
    /// `.dockerignore`, with Docker's semantics, when there is no
    /// `.gcloudignore`.
    docker: Option<DockerIgnore>,
    /// Sent whatever `.gitignore` or `.dockerignore` say, as Docker sends
    /// them; a `.gcloudignore` is obeyed to the letter.
    always_sent: &'static [&'static str],
}

const DOCKER_ALWAYS_SENT: &[&str] = &["Dockerfile", ".dockerignore"];

/// The ignore rules of a tree, as gcloud would apply them.
fn ignore_rules(root: &Path) -> Result<(Rules, Option<&'static str>), ArchiveError> {
    let mut b = GitignoreBuilder::new(root);
    let mut docker = None;
    let gcloudignore = root.join(".gcloudignore");
    let used = if gcloudignore.is_file() {
        add_file(&mut b, root, ".gcloudignore", 0)?;
        Some(".gcloudignore")
    } else {
        let mut used = None;
        if root.join(".gitignore").is_file() {
            add_file(&mut b, root, ".gitignore", 0)?;
            used = Some(".gitignore");
        }
        let path = root.join(".dockerignore");
        if path.is_file() {
            let text = read_ignore_file(root, ".dockerignore")?;
            let rules = DockerIgnore::parse(&text).map_err(|e| ArchiveError::BadDockerignore {
                line: e.line,
                source: e,
            })?;
            docker = Some(rules);
            used = Some(used.map_or(".dockerignore", |_| ".gitignore and .dockerignore"));
        }
        used
    };
    let always_sent = if gcloudignore.is_file() {
        &[][..]
    } else {
        DOCKER_ALWAYS_SENT
    };
    let git = b.build().map_err(|source| ArchiveError::BadPattern {
        file: "(ignore rules)".into(),
        line: 0,
        source,
    })?;
    Ok((
        Rules {
            git,
            docker,
            always_sent,
        },
        used,
    ))
}

fn add_file(
    b: &mut GitignoreBuilder,
    root: &Path,
    name: &str,
    depth: usize,
) -> Result<(), ArchiveError> {
    let text = read_ignore_file(root, name)?;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if let Some(included) = line.strip_prefix("#!include:") {
            let included = included.trim();
            // Only files of the tree decide what is sent: no absolute
            // paths, no way up.
            let inside = Path::new(included)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside || included.is_empty() {
                return Err(ArchiveError::BadInclude {
                    file: name.into(),
                    line: i + 1,
                    target: included.into(),
                });
            }
            // One level of includes, as gcloud allows.
            if depth == 0 && root.join(included).is_file() {
                add_file(b, root, included, depth + 1)?;
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        b.add_line(None, line)
            .map_err(|source| ArchiveError::BadPattern {
                file: name.into(),
                line: i + 1,
                source,
            })?;
    }
    Ok(())
}

/// One entry to archive, relative to the root.
enum Entry {
    File {
        rel: PathBuf,
        size: u64,
        executable: bool,
    },
    Symlink {
        rel: PathBuf,
        target: PathBuf,
    },
    /// Not in the tree: added for the build (a generated Dockerfile).
    Generated {
        rel: PathBuf,
        content: Vec<u8>,
    },
}

impl Entry {
    fn rel(&self) -> &Path {
        match self {
            Entry::File { rel, .. } | Entry::Symlink { rel, .. } | Entry::Generated { rel, .. } => {
                rel
            }
        }
    }
}

/// Packs `root`, plus `extra` files (path, content) that the build needs
/// but the tree lacks, such as a generated Dockerfile; the tree itself is
/// never written to.
pub fn pack(
    root: &Path,
    max_bytes: u64,
    extra: &[(String, String)],
) -> Result<SourceArchive, ArchiveError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    pack_on(root, max_bytes, extra, threads)
}

/// `pack` compressing on `threads` threads: the bytes do not depend on
/// how many (fixed-size blocks, in order).
fn pack_on(
    root: &Path,
    max_bytes: u64,
    extra: &[(String, String)],
    threads: usize,
) -> Result<SourceArchive, ArchiveError> {
    let (rules, ignore_file) = ignore_rules(root)?;
    let mut entries = Vec::new();
    collect(root, Path::new(""), &rules, &mut entries)?;
    entries.retain(|e| !extra.iter().any(|(p, _)| e.rel() == Path::new(p)));
    for (path, text) in extra {
        entries.push(Entry::Generated {
            rel: PathBuf::from(path),
            content: text.clone().into_bytes(),
        });
    }
    entries.sort_by(|a, b| a.rel().cmp(b.rel()));

    let total: u64 = entries
        .iter()
        .map(|e| match e {
            Entry::File { size, .. } => *size,
            Entry::Generated { content, .. } => content.len() as u64,
            Entry::Symlink { .. } => 0,
        })
        .sum();
    if total > max_bytes {
        let mut files: Vec<(String, u64)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::File { rel, size, .. } => Some((rel.display().to_string(), *size)),
                Entry::Symlink { .. } | Entry::Generated { .. } => None,
            })
            .collect();
        files.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        files.truncate(5);
        return Err(ArchiveError::TooLarge {
            total,
            limit: max_bytes,
            largest: files,
        });
    }

    let file = tempfile::tempfile().map_err(|source| ArchiveError::Io {
        path: format!("(a temporary file in {})", std::env::temp_dir().display()),
        source,
    })?;
    let packed = Sink::new(file);
    let gz = gzp::par::compress::ParCompressBuilder::<gzp::deflate::Gzip>::new()
        .num_threads(threads)
        .map_err(|e| ArchiveError::Io {
            path: "(archive)".into(),
            source: io::Error::other(e),
        })?
        .compression_level(gzp::Compression::default())
        .from_writer(packed.clone());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let tar_err = |source| ArchiveError::Io {
        path: "(archive)".into(),
        source,
    };
    for e in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match e {
            Entry::Symlink { rel, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                tar.append_link(&mut header, rel, target).map_err(tar_err)?;
            }
            Entry::Generated { rel, content } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(content.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, rel, content.as_slice())
                    .map_err(tar_err)?;
            }
            Entry::File {
                rel,
                size,
                executable,
            } => {
                let full = root.join(rel);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                let f = fs::File::open(&full).map_err(io_err(&full))?;
                tar.append_data(&mut header, rel, f)
                    .map_err(io_err(&full))?;
            }
        }
    }
    let mut gz = tar.into_inner().map_err(tar_err)?;
    gzp::ZWriter::finish(&mut gz).map_err(|e| tar_err(io::Error::other(e)))?;
    drop(gz);
    let (file, len, sha256) = packed.finish().map_err(tar_err)?;
    Ok(SourceArchive {
        blob: Blob {
            file: std::sync::Arc::new(file),
            len,
        },
        sha256,
        files: entries.len(),
        source_bytes: total,
        ignore_file,
    })
}

/// Where the compressor's threads write the archive (it needs an owned,
/// sendable writer): a buffered file, hashed on the way.
#[derive(Clone)]
struct Sink(std::sync::Arc<std::sync::Mutex<SinkState>>);

struct SinkState {
    /// `None` once finished.
    out: Option<io::BufWriter<fs::File>>,
    hash: Sha256,
    len: u64,
}

impl Sink {
    fn new(file: fs::File) -> Self {
        Sink(std::sync::Arc::new(std::sync::Mutex::new(SinkState {
            out: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            hash: Sha256::new(),
            len: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file, its length and hex digest, once the compressor is done.
    fn finish(&self) -> io::Result<(fs::File, u64, String)> {
        let mut state = self.lock();
        let len = state.len;
        let sha256 = hex(&std::mem::take(&mut state.hash).finalize());
        let out = state.out.take().ok_or_else(finished)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok((file, len, sha256))
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.lock();
        state.out.as_mut().ok_or_else(finished)?.write_all(buf)?;
        state.hash.update(buf);
        state.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.lock().out.as_mut() {
            Some(out) => out.flush(),
            None => Err(finished()),
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("the archive was already finished")
}

/// Bytes to upload that can be read again from any offset (a retried
/// upload, a resumed chunk) without holding them in memory.
#[derive(Debug, Clone)]
pub struct Blob {
    file: std::sync::Arc<fs::File>,
    len: u64,
}

impl Blob {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes from `offset` (fewer at the end). Blocking: call it
    /// off the async workers.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let end = self.len.min(offset.saturating_add(len as u64));
        let mut buf = vec![0; end.saturating_sub(offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// All of it, for small blobs and tests.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        self.read_at(0, self.len as usize)
    }
}

fn collect(
    root: &Path,
    rel: &Path,
    rules: &Rules,
    out: &mut Vec<Entry>,
) -> Result<(), ArchiveError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        if ALWAYS_SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let path = rel.join(&name);
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(ArchiveError::PathEscape {
                path: path.display().to_string(),
            });
        }
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        let rel_text = path.to_string_lossy().replace('\\', "/");
        if rules.always_sent.contains(&rel_text.as_str()) {
            // Sent as it is: neither rule set may leave it out.
        } else if rules.git.matched(&full, ft.is_dir()).is_ignore() {
            continue;
        } else if let Some(docker) = &rules.docker {
            let left_out = docker.excludes(&rel_text);
            // An excluded directory is still walked when a `!` pattern may
            // bring back something under it; its files are judged one by one.
            if left_out && !(ft.is_dir() && docker.has_exceptions()) {
                continue;
            }
        }
        if ft.is_dir() {
            collect(root, &path, rules, out)?;
        } else if ft.is_file() {
            out.push(Entry::File {
                rel: path,
                size: meta.len(),
                executable: is_executable(&meta),
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            if !stays_inside(rel, &target) {
                return Err(ArchiveError::SymlinkEscape {
                    path: path.display().to_string(),
                    target: target.display().to_string(),
                });
            }
            out.push(Entry::Symlink { rel: path, target });
        } else {
            return Err(ArchiveError::SpecialFile {
                path: path.display().to_string(),
                kind: special_kind(&ft),
            });
        }
    }
    Ok(())
}

/// Whether a symlink in directory `dir` (relative to the root) with this
/// target resolves inside the tree, judged lexically: the link is archived,
/// never followed.
fn stays_inside(dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(unix)]
fn special_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_block_device() || ft.is_char_device() {
        "device file"
    } else if ft.is_fifo() {
        "named pipe"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> &'static str {
    "special file"
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &fs::Metadata) -> bool {
    false
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    const NO_LIMIT: u64 = u64::MAX;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(p, text).expect("write");
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        write(dir.path(), "src/app/main.py", "print('hi')\n");
        write(dir.path(), ".git/HEAD", "ref: refs/heads/main\n");
        dir
    }

    fn names(bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(GzDecoder::new(bytes));
        a.entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    fn bytes(a: &SourceArchive) -> Vec<u8> {
        a.blob.to_vec().expect("read the archive")
    }

    fn packed_names(root: &Path) -> Vec<String> {
        names(
            &pack(root, NO_LIMIT, &[])
                .expect("pack")
                .blob
                .to_vec()
                .expect("read"),
        )
    }

    #[test]
    fn archive_is_sorted_and_skips_vcs() {
        let dir = tree();
        let a = pack(dir.path(), NO_LIMIT, &[]).expect("pack");
        assert_eq!(names(&bytes(&a)), vec!["Dockerfile", "src/app/main.py"]);
        assert_eq!(a.files, 2);
        assert_eq!(a.ignore_file, None);
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        let dir = tree();
        let a = pack(dir.path(), NO_LIMIT, &[]).expect("pack");
        // Rewriting a file with the same content changes its mtime only.
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        let b = pack(dir.path(), NO_LIMIT, &[]).expect("pack");
        assert_eq!(bytes(&a), bytes(&b));
        write(dir.path(), "Dockerfile", "FROM busybox\n");
        let c = pack(dir.path(), NO_LIMIT, &[]).expect("pack");
        assert_ne!(a.sha256, c.sha256);
    }

    /// Compressed on 1 or 8 threads, over several compression blocks: the
    /// same bytes, and one gzip stream a plain decoder reads whole.
    #[test]
    fn the_bytes_do_not_depend_on_the_number_of_threads() {
        let dir = tree();
        // Several of gzp's 128 KiB input blocks.
        let noise: String = (0..600_000u64)
            .map(|i| char::from(b'a' + ((i * 2_654_435_761) % 26) as u8))
            .collect();
        write(dir.path(), "big.txt", &noise);
        let one = pack_on(dir.path(), NO_LIMIT, &[], 1).expect("pack");
        let many = pack_on(dir.path(), NO_LIMIT, &[], 8).expect("pack");
        assert_eq!(bytes(&one), bytes(&many));
        assert_eq!(hex(&Sha256::digest(bytes(&one))), one.sha256);
        // The unit tests' `names` reads it with a plain GzDecoder.
        let names = names(&bytes(&one));
        assert!(names.contains(&"big.txt".to_string()), "{names:?}");
        assert_eq!(names.len(), one.files, "every entry, to the end: {names:?}");
    }

    /// Table of ignore rules: (case, ignore files and their text, expected archive).
    #[test]
    fn ignore_rules_follow_gcloud() {
        let files = [
            "Dockerfile",
            "app.py",
            "debug.log",
            "build/out.bin",
            "keep/important.log",
            "node_modules/x/index.js",
            "docs/a.md",
        ];
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "gitignore with negation",
                vec![(
                    ".gitignore",
                    "*.log\n!keep/important.log\nbuild/\nnode_modules\n",
                )],
                vec![
                    ".gitignore",
                    "Dockerfile",
                    "app.py",
                    "docs/a.md",
                    "keep/important.log",
                ],
            ),
            (
                "gcloudignore wins over gitignore and includes it",
                vec![
                    (
                        ".gcloudignore",
                        ".gcloudignore\n#!include:.gitignore\ndocs/\n",
                    ),
                    (".gitignore", "*.log\nnode_modules/\n"),
                ],
                vec![".gitignore", "Dockerfile", "app.py", "build/out.bin"],
            ),
            (
                "gcloudignore without include ignores gitignore",
                vec![(".gcloudignore", "build\n"), (".gitignore", "*.py\n")],
                vec![
                    ".gcloudignore",
                    ".gitignore",
                    "Dockerfile",
                    "app.py",
                    "debug.log",
                    "docs/a.md",
                    "keep/important.log",
                    "node_modules/x/index.js",
                ],
            ),
            (
                "dockerignore is anchored and never drops the Dockerfile",
                vec![(".dockerignore", "*.log\nnode_modules\nDockerfile\n")],
                vec![
                    ".dockerignore",
                    "Dockerfile",
                    "app.py",
                    "build/out.bin",
                    "docs/a.md",
                    "keep/important.log",
                ],
            ),
            (
                // Docker's allow-list idiom: gitignore could not bring back
                // files under an excluded directory.
                "dockerignore exceptions reach under excluded directories",
                vec![(
                    ".dockerignore",
                    "**\n!app.py\n!node_modules/x/**\nnode_modules/x/*.md\n",
                )],
                vec![
                    ".dockerignore",
                    "Dockerfile",
                    "app.py",
                    "node_modules/x/index.js",
                ],
            ),
        ];
        for (name, ignores, want) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            for f in files {
                write(dir.path(), f, "x\n");
            }
            for (f, text) in &ignores {
                write(dir.path(), f, text);
            }
            assert_eq!(packed_names(dir.path()), want, "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_inside_are_kept_and_escapes_refused() {
        use std::os::unix::fs::symlink;
        let dir = tree();
        symlink("app/main.py", dir.path().join("src/entry.py")).expect("symlink");
        assert!(packed_names(dir.path()).contains(&"src/entry.py".to_string()));

        for (link, target) in [
            ("escape", "../../etc/passwd"),
            ("abs", "/etc/passwd"),
            ("up", ".."),
        ] {
            let d = tree();
            symlink(target, d.path().join(link)).expect("symlink");
            let e = pack(d.path(), NO_LIMIT, &[]).expect_err("refused");
            assert!(
                matches!(e, ArchiveError::SymlinkEscape { .. }),
                "{link}: {e}"
            );
            assert!(
                e.to_string().contains("points outside the source tree"),
                "{e}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused() {
        let dir = tree();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return; // no mkfifo on this machine
        }
        let e = pack(dir.path(), NO_LIMIT, &[]).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "pipe is a named pipe, which cannot be part of a source archive"
        );
        // Ignored special files are fine.
        write(dir.path(), ".gitignore", "pipe\n");
        assert!(pack(dir.path(), NO_LIMIT, &[]).is_ok());
    }

    #[test]
    fn size_limit_names_the_largest_files() {
        let dir = tree();
        write(dir.path(), "data/big.bin", &"x".repeat(3 * 1024 * 1024));
        write(dir.path(), "data/medium.bin", &"x".repeat(2 * 1024 * 1024));
        let e = pack(dir.path(), 4 * 1024 * 1024, &[]).expect_err("too large");
        let msg = e.to_string();
        assert!(msg.starts_with("the source is 5 MiB, over the 4 MiB limit; largest files: data/big.bin (3 MiB), data/medium.bin (2 MiB)"), "{msg}");
    }

    #[test]
    fn ignore_files_are_bounded_before_they_are_read() {
        let dir = tree();
        // 64 MiB of nothing: refused by its size, without reading it.
        let f = fs::File::create(dir.path().join(".gitignore")).expect("create");
        f.set_len(64 * 1024 * 1024).expect("sparse");
        let e = pack(dir.path(), NO_LIMIT, &[]).expect_err("refused");
        assert!(
            matches!(e, ArchiveError::IgnoreFileTooLarge { size: 67108864, .. }),
            "{e}"
        );
        // Small in bytes but too many lines.
        write(
            dir.path(),
            ".gitignore",
            &"a\n".repeat(MAX_IGNORE_LINES + 1),
        );
        let e = pack(dir.path(), NO_LIMIT, &[]).expect_err("refused");
        assert!(matches!(e, ArchiveError::IgnoreFileTooLarge { .. }), "{e}");
        fs::remove_file(dir.path().join(".gitignore")).expect("rm");
        let f = fs::File::create(dir.path().join(".dockerignore")).expect("create");
        f.set_len(2 * MAX_IGNORE_BYTES).expect("sparse");
        let e = pack(dir.path(), NO_LIMIT, &[]).expect_err("refused");
        assert!(matches!(e, ArchiveError::IgnoreFileTooLarge { .. }), "{e}");
    }

    #[test]
    fn includes_and_ignore_files_stay_inside_the_tree() {
        let outside = tempfile::tempdir().expect("tempdir");
        write(outside.path(), "rules", "src/\n");
        for include in [
            "/etc/passwd".to_string(),
            "/proc/self/environ".to_string(),
            "../rules".to_string(),
            format!("{}/rules", outside.path().display()),
            "sub/../../rules".to_string(),
        ] {
            let dir = tree();
            write(
                dir.path(),
                ".gcloudignore",
                &format!("#!include:{include}\n"),
            );
            let e = pack(dir.path(), NO_LIMIT, &[]).expect_err(&include);
            assert!(
                matches!(e, ArchiveError::BadInclude { line: 1, .. }),
                "{include}: {e}"
            );
        }
        // A symlinked ignore file that leads out of the tree.
        let dir = tree();
        std::os::unix::fs::symlink(outside.path().join("rules"), dir.path().join(".gitignore"))
            .expect("symlink");
        let e = pack(dir.path(), NO_LIMIT, &[]).expect_err("refused");
        assert!(matches!(e, ArchiveError::SymlinkEscape { .. }), "{e}");
    }
}
