//! `kura stat`, `kura ls`, `kura delete` and `kura retrieve`: what the
//! gateway's metadata says, and one instance streamed into a temporary file
//! that is renamed into place only after its size and blake3 checked out.

use super::*;

pub(super) async fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    let what = format!("stat {}", args.uid);
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    let request = StatRequest {
        tenant,
        sop_instance_uid: args.uid.clone(),
    };
    let info = client
        .stat(with_timeout(request, METADATA_CALL_TIMEOUT))
        .await
        .map_err(|status| RpcError::new(&status, &endpoint))
        .context(what)?
        .into_inner();
    if args.json {
        print_json(&info_json(&info))?;
    } else {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        write_info(&mut out, &info)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let (what, target) = match (&args.uid, &args.study) {
        (_, Some(study)) => (
            format!("delete study {study}"),
            format!("every instance of study {study}"),
        ),
        (Some(uid), None) => (format!("delete {uid}"), format!("instance {uid}")),
        (None, None) => anyhow::bail!("name an instance UID or --study UID"),
    };
    if !args.yes {
        use std::io::{BufRead, IsTerminal};
        if !io::stdin().is_terminal() {
            anyhow::bail!("{what}: not confirmed (pass --yes when there is no terminal to ask)");
        }
        eprint!("Delete {target} for good? Type yes to confirm: ");
        let mut answer = String::new();
        io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            eprintln!("nothing deleted");
            return Ok(ExitCode::from(1));
        }
    }
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Admin)
        .await
        .context(what.clone())?;
    let answer = match (&args.uid, &args.study) {
        (_, Some(study)) => {
            client
                .delete_study(with_timeout(
                    kura_proto::v1::DeleteStudyRequest {
                        tenant: tenant.clone(),
                        study_instance_uid: study.clone(),
                    },
                    METADATA_CALL_TIMEOUT,
                ))
                .await
        }
        (uid, None) => {
            client
                .delete(with_timeout(
                    kura_proto::v1::DeleteRequest {
                        tenant: tenant.clone(),
                        sop_instance_uid: uid.clone().unwrap_or_default(),
                    },
                    METADATA_CALL_TIMEOUT,
                ))
                .await
        }
    }
    .map_err(|status| RpcError::new(&status, &endpoint))
    .context(what)?
    .into_inner();
    if args.json {
        print_json(&serde_json::json!({
            "tenant": tenant,
            "sop_instance_uid": args.uid,
            "study_instance_uid": args.study,
            "deleted": answer.deleted,
        }))?;
    } else {
        println!(
            "deleted {} instance(s); their shards are reclaimed after the storage nodes' orphan grace period",
            answer.deleted
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let what = match &args.series {
        Some(series) => format!("ls study {} series {series}", args.study),
        None => format!("ls study {}", args.study),
    };
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    let request = ListStudyRequest {
        tenant,
        study_instance_uid: args.study.clone(),
        series_instance_uid: args.series.clone(),
    };
    let rpc = |status: tonic::Status| RpcError::new(&status, &endpoint);
    let mut stream = client
        .list_study(with_timeout(request, METADATA_CALL_TIMEOUT))
        .await
        .map_err(rpc)
        .context(what.clone())?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(info) = stream.message().await.map_err(rpc).context(what.clone())? {
        infos.push(info);
    }
    if args.json {
        print_json(&Value::Array(infos.iter().map(info_json).collect()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if infos.is_empty() {
        eprintln!("kura: {what}: no instances");
        return Ok(ExitCode::SUCCESS);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    write_table(&mut out, &infos)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn write_table(out: &mut impl Write, infos: &[InstanceInfo]) -> io::Result<()> {
    let header = [
        "SOP INSTANCE UID",
        "SERIES",
        "MODALITY",
        "SIZE",
        "PROTECTION",
        "STORED AT",
    ];
    let rows: Vec<[String; 6]> = infos
        .iter()
        .map(|info| {
            [
                info.sop_instance_uid.clone(),
                or_dash(&info.series_instance_uid).to_owned(),
                or_dash(&info.modality).to_owned(),
                HumanBytes(info.size).to_string(),
                protection_name(info.protection),
                rfc3339(info.stored_at_unix_ms, false),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 6]| -> io::Result<()> {
        let [uid, series, modality, size, protection, stored] = cells;
        writeln!(
            out,
            "{uid:<w0$}  {series:<w1$}  {modality:<w2$}  {size:>w3$}  {protection:<w4$}  {stored}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        )
    };
    line(out, header)?;
    for row in &rows {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// retrieve

pub(super) async fn retrieve(args: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let what = format!("retrieve {}", args.uid);
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && args.json {
        bail!("{what}: --json cannot go with -o - (both write to stdout)");
    }
    if to_stdout && io::stdout().is_terminal() {
        bail!("{what}: not writing a DICOM instance to a terminal; redirect stdout or use -o FILE");
    }
    if !to_stdout {
        if args.output.is_dir() {
            bail!(
                "{what}: {} is a folder; give a file name",
                args.output.display()
            );
        }
        let dir = output_dir(&args.output);
        if !dir.is_dir() {
            bail!("{what}: folder {} does not exist", dir.display());
        }
    }
    let (client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    // Ctrl-C drops the transfer, and with it the temporary file.
    let transfer = retrieve_to(client, &endpoint, &tenant, &args, to_stdout);
    let info = tokio::select! {
        result = transfer => result.context(what)?,
        _ = tokio::signal::ctrl_c() => bail!("{what}: interrupted"),
    };
    let output = if to_stdout {
        "-".to_owned()
    } else {
        args.output.display().to_string()
    };
    if args.json {
        print_json(&json!({"info": info_json(&info), "output": output}))?;
    } else if !to_stdout {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "retrieved {} ({} bytes, blake3 {}) to {output}",
            info.sop_instance_uid, info.size, info.blake3
        )?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The folder a retrieved file is written in (its temporary file too).
pub(super) fn output_dir(output: &Path) -> &Path {
    match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Streams the instance into `args.output` (or stdout) and returns its
/// info once the bytes matched it.
pub(super) async fn retrieve_to(
    mut client: ArchiveClient<Channel>,
    endpoint: &str,
    tenant: &str,
    args: &RetrieveArgs,
    to_stdout: bool,
) -> anyhow::Result<InstanceInfo> {
    let rpc = |status: tonic::Status| RpcError::new(&status, endpoint);
    let request = RetrieveRequest {
        tenant: tenant.to_string(),
        sop_instance_uid: args.uid.clone(),
    };
    let mut stream = client.retrieve(request).await.map_err(rpc)?.into_inner();
    let info = match stream.message().await.map_err(rpc)? {
        Some(message) => match message.msg {
            Some(retrieve_response::Msg::Info(info)) => info,
            _ => bail!("the gateway's answer did not start with the instance's info"),
        },
        None => bail!("the gateway ended the stream without an answer"),
    };

    // Until `persist`, the temporary file is removed when dropped: on any
    // error, and on Ctrl-C (the future is dropped).
    let mut temp = None;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        let dir = output_dir(&args.output);
        let file = tempfile::Builder::new()
            .prefix(".kura-retrieve-")
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("create a temporary file in {}", dir.display()))?;
        let handle = file
            .as_file()
            .try_clone()
            .context("open the temporary file")?;
        temp = Some(file);
        Box::new(tokio::fs::File::from_std(handle))
    };

    let mut hasher = blake3::Hasher::new();
    let mut received: u64 = 0;
    while let Some(message) = stream.message().await.map_err(rpc)? {
        let chunk = match message.msg {
            Some(retrieve_response::Msg::Chunk(chunk)) => chunk,
            Some(retrieve_response::Msg::Info(_)) => {
                bail!("the gateway sent a second info in the stream")
            }
            None => bail!("the gateway sent an empty message in the stream"),
        };
        received += chunk.len() as u64;
        if received > info.size {
            bail!(
                "the gateway sent more than the instance's {} bytes",
                info.size
            );
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.context("write the instance")?;
    }
    out.flush().await.context("write the instance")?;
    let hash = hasher.finalize();
    let consequence = if to_stdout {
        "what was written to stdout is not the instance".to_owned()
    } else {
        format!("{} was not written", args.output.display())
    };
    if received != info.size {
        bail!(
            "DATA_LOSS: the stream ended after {received} of {} bytes; {consequence}",
            info.size
        );
    }
    if !hash.to_hex().eq_ignore_ascii_case(&info.blake3) {
        bail!(
            "DATA_LOSS: what arrived has blake3 {}, the archive says {}; {consequence}",
            hash.to_hex(),
            info.blake3
        );
    }
    if let Some(file) = temp {
        file.as_file()
            .sync_all()
            .context("flush the instance to disk")?;
        drop(out);
        file.persist(&args.output).map_err(|e| {
            anyhow!(
                "move the instance into {}: {}",
                args.output.display(),
                e.error
            )
        })?;
    }
    Ok(info)
}
