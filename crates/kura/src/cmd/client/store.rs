//! `kura store`: walking the inputs (recursively, symlinks followed, each
//! file once), then sending them concurrently in 1 MiB chunks read as they
//! are sent, with a progress bar and a per-file outcome.

use super::*;

/// What `store` will send: every regular file found, with its size then,
/// and what could not be read (reported, never skipped silently).
#[derive(Debug, Default)]
pub struct Inputs {
    pub files: Vec<(PathBuf, u64)>,
    pub problems: Vec<(PathBuf, String)>,
}

/// Expands the command's paths: a file as itself, a folder as every file
/// under it (symlinks followed, each folder walked once), sorted by path.
/// A path given on the command line that cannot be read is an error before
/// anything is sent; what goes wrong deeper in a folder is a problem.
pub fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut visited = HashSet::new();
    for path in paths {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_file() {
            inputs.files.push((path.clone(), meta.len()));
        } else if meta.is_dir() {
            let mut found = Inputs::default();
            walk(path, &mut visited, &mut found);
            found.files.sort();
            found.problems.sort();
            inputs.files.append(&mut found.files);
            inputs.problems.append(&mut found.problems);
        } else {
            inputs
                .problems
                .push((path.clone(), "not a regular file or folder".to_owned()));
        }
    }
    Ok(inputs)
}

pub(super) fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, found: &mut Inputs) {
    // A symlink back up the tree would loop; a folder is walked once.
    match fs::canonicalize(dir) {
        Ok(real) => {
            if !visited.insert(real) {
                return;
            }
        }
        Err(e) => {
            found
                .problems
                .push((dir.to_owned(), format!("cannot read: {e}")));
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            found
                .problems
                .push((dir.to_owned(), format!("cannot list: {e}")));
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                found
                    .problems
                    .push((dir.to_owned(), format!("cannot list: {e}")));
                continue;
            }
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => found.files.push((path, meta.len())),
            Ok(meta) if meta.is_dir() => walk(&path, visited, found),
            Ok(_) => found
                .problems
                .push((path, "not a regular file or folder".to_owned())),
            Err(e) => found.problems.push((path, format!("cannot read: {e}"))),
        }
    }
}

// ---------------------------------------------------------------------------
// store: sending

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Stored,
    AlreadyStored,
    Refused,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Stored => "stored",
            Status::AlreadyStored => "already_stored",
            Status::Refused => "refused",
            Status::Error => "error",
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub status: Status,
    pub sop_instance_uid: Option<String>,
    pub blake3: Option<String>,
    pub size: Option<u64>,
    /// The gRPC code name for the gateway's answers; none for local errors.
    pub code: Option<&'static str>,
    pub message: Option<String>,
}

impl FileOutcome {
    pub(super) fn failed(
        path: PathBuf,
        size: Option<u64>,
        status: Status,
        code: Option<Code>,
        message: String,
    ) -> Self {
        FileOutcome {
            path,
            status,
            sop_instance_uid: None,
            blake3: None,
            size,
            code: code.map(code_name),
            message: Some(message),
        }
    }
}

pub fn summary_json(outcomes: &[FileOutcome]) -> Value {
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let files: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "path": o.path.display().to_string(),
                "status": o.status.as_str(),
                "sop_instance_uid": o.sop_instance_uid,
                "blake3": o.blake3,
                "size": o.size,
                "code": o.code,
                "message": o.message,
            })
        })
        .collect();
    json!({
        "stored": count(Status::Stored),
        "already_stored": count(Status::AlreadyStored),
        "refused": count(Status::Refused),
        "errors": count(Status::Error),
        "files": files,
    })
}

pub(super) fn write_summary(
    out: &mut impl Write,
    outcomes: &[FileOutcome],
    bytes: u64,
    elapsed: Duration,
) -> io::Result<()> {
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let (refused, errors) = (count(Status::Refused), count(Status::Error));
    for (status, title) in [(Status::Refused, "refused"), (Status::Error, "not sent")] {
        if count(status) == 0 {
            continue;
        }
        writeln!(out, "{title}:")?;
        for o in outcomes.iter().filter(|o| o.status == status) {
            let code = o.code.map(|c| format!("{c}: ")).unwrap_or_default();
            let message = o.message.as_deref().unwrap_or("");
            writeln!(out, "  {}: {code}{message}", o.path.display())?;
        }
    }
    write!(
        out,
        "stored {}, already there {}, refused {refused}",
        count(Status::Stored),
        count(Status::AlreadyStored)
    )?;
    if errors > 0 {
        write!(out, ", not sent {errors}")?;
    }
    writeln!(
        out,
        " ({} files, {} in {:.1} s)",
        outcomes.len(),
        HumanBytes(bytes),
        elapsed.as_secs_f64()
    )
}

pub(super) fn progress_bar(total_bytes: u64, hidden: bool) -> ProgressBar {
    if hidden || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub(super) async fn store(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let inputs = collect_inputs(&args.paths).context("store")?;
    let (client, endpoint, tenant) = connect(&args.connect, ClientRole::Writer)
        .await
        .context("store")?;

    let total_files = inputs.files.len();
    let total_bytes: u64 = inputs.files.iter().map(|(_, size)| size).sum();
    let bar = progress_bar(total_bytes, args.json);
    bar.set_message(format!("0/{total_files} files"));

    let mut pending = stream::iter(inputs.files.into_iter().enumerate())
        .map(|(index, (path, size))| {
            let (client, tenant, bar) = (client.clone(), tenant.clone(), bar.clone());
            let endpoint = endpoint.clone();
            async move {
                let outcome = store_file(client, &endpoint, tenant, path, size, &bar).await;
                (index, outcome)
            }
        })
        .buffer_unordered(usize::from(args.concurrency));
    let mut outcomes = Vec::with_capacity(total_files + inputs.problems.len());
    while let Some(done) = pending.next().await {
        outcomes.push(done);
        bar.set_message(format!("{}/{total_files} files", outcomes.len()));
    }
    bar.finish_and_clear();
    outcomes.sort_by_key(|(index, _)| *index);
    let mut outcomes: Vec<FileOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    outcomes.extend(
        inputs
            .problems
            .into_iter()
            .map(|(path, message)| FileOutcome::failed(path, None, Status::Error, None, message)),
    );

    if args.json {
        print_json(&summary_json(&outcomes))?;
    } else {
        if outcomes.is_empty() {
            eprintln!("kura: store: no files found");
        }
        let stdout = io::stdout();
        let mut out = stdout.lock();
        write_summary(&mut out, &outcomes, total_bytes, started.elapsed())?;
        out.flush()?;
    }
    let any = |status| outcomes.iter().any(|o| o.status == status);
    Ok(if any(Status::Error) {
        ExitCode::from(2)
    } else if any(Status::Refused) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Stores one file as one Store stream.
pub(super) async fn store_file(
    mut client: ArchiveClient<Channel>,
    endpoint: &str,
    tenant: String,
    path: PathBuf,
    walked_size: u64,
    bar: &ProgressBar,
) -> FileOutcome {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let outcome = store_file_inner(&mut client, endpoint, tenant, &path, bar, &sent).await;
    // Count what was not sent (a refusal, an error) as done for the bar.
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    bar.inc(walked_size.saturating_sub(sent));
    match outcome {
        Ok(outcome) => outcome,
        Err(err) => FileOutcome::failed(
            path,
            Some(walked_size),
            Status::Error,
            None,
            format!("{err:#}"),
        ),
    }
}

pub(super) async fn store_file_inner(
    client: &mut ArchiveClient<Channel>,
    endpoint: &str,
    tenant: String,
    path: &Path,
    bar: &ProgressBar,
    sent: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<FileOutcome> {
    let file = tokio::fs::File::open(path).await.context("cannot open")?;
    let meta = file.metadata().await.context("cannot read")?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let size = meta.len();
    let header = StoreRequest::header(tenant, Some(size));
    let read_error = Arc::new(Mutex::new(None));
    let chunks = file_chunks(file, size, read_error.clone(), bar.clone(), sent.clone());
    let requests = stream::once(async move { header })
        .chain(chunks.map(|chunk| StoreRequest::chunk(chunk.into())));
    let answer = client.store(requests).await;
    // A local read failure ended the stream early: the gateway's refusal of
    // the short stream is its consequence, not the cause.
    if let Some(err) = read_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(err);
    }
    let path = path.to_owned();
    Ok(match answer {
        Ok(response) => {
            let response = response.into_inner();
            let info = response.info.unwrap_or_default();
            FileOutcome {
                path,
                status: if response.already_stored {
                    Status::AlreadyStored
                } else {
                    Status::Stored
                },
                sop_instance_uid: Some(info.sop_instance_uid),
                blake3: Some(info.blake3),
                size: Some(info.size),
                code: None,
                message: None,
            }
        }
        Err(status) => {
            let err = RpcError::new(&status, endpoint);
            let outcome = if err.is_refusal() {
                Status::Refused
            } else {
                Status::Error
            };
            // The code has its own field; the message keeps any hint.
            let message = err.to_string();
            let message = message
                .strip_prefix(code_name(status.code()))
                .map(|rest| rest.strip_prefix(": ").unwrap_or(rest).to_owned())
                .unwrap_or(message);
            FileOutcome::failed(path, Some(size), outcome, Some(status.code()), message)
        }
    })
}

/// The file's first `size` bytes as chunks of [`STORE_CHUNK_BYTES`], read
/// only when the transport asks for the next one. A read error or a file
/// that shrank ends the stream and is left in `error`.
pub(super) fn file_chunks(
    file: tokio::fs::File,
    size: u64,
    error: Arc<Mutex<Option<anyhow::Error>>>,
    bar: ProgressBar,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    stream::unfold((file, 0u64), move |(mut file, done)| {
        let (error, bar, sent) = (error.clone(), bar.clone(), sent.clone());
        async move {
            if done >= size {
                return None;
            }
            let want = usize::try_from(size - done)
                .unwrap_or(usize::MAX)
                .min(STORE_CHUNK_BYTES);
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            let failure = loop {
                if filled == want {
                    break None;
                }
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => {
                        break Some(anyhow!(
                            "the file shrank while being sent: {size} bytes expected, {} read",
                            done + filled as u64
                        ));
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(anyhow::Error::new(e).context("cannot read")),
                }
            };
            if let Some(err) = failure {
                if let Ok(mut slot) = error.lock() {
                    *slot = Some(err);
                }
                return None;
            }
            bar.inc(want as u64);
            sent.fetch_add(want as u64, std::sync::atomic::Ordering::Relaxed);
            Some((buf, (file, done + want as u64)))
        }
    })
}
