//! `kura dicom …`: DICOM tools that work on local files, without a cluster.
//!
//! `inspect` runs the same checks the gateway runs on a Store: the identity
//! from a growing prefix (`kura_dicom::read_identity`), then the whole-file
//! structure (`kura_dicom::validate`) streamed from disk, so it needs memory
//! for the prefix only, not for the file.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kura_dicom::{DicomError, Identity, Summary, read_identity, transfer_syntax_name, validate};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum DicomCommand {
    /// Check DICOM Part-10 files as the archive would on Store, and show
    /// what identifies each one. Exits 1 if any file would be refused.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The files to inspect.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Print one JSON array of {file, ok, identity, summary | error{code, message}}.
    #[arg(long)]
    json: bool,
}

pub fn run(command: DicomCommand) -> anyhow::Result<ExitCode> {
    match command {
        DicomCommand::Inspect(args) => inspect(&args),
    }
}

/// First prefix read for the identity; doubled while more is needed. The
/// identifying attributes of real instances sit in the first few KiB.
const PREFIX_START_BYTES: usize = 64 * 1024;

/// Buffer of the streaming whole-file check.
const VALIDATE_BUFFER_BYTES: usize = 256 * 1024;

/// The result for one file, as printed.
#[derive(Debug, Serialize)]
struct Report {
    file: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Refusal>,
}

/// Why a file was refused: a `kura_dicom` error, or "io" when the file could
/// not be read at all.
#[derive(Debug, Serialize)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl From<DicomError> for Refusal {
    fn from(err: DicomError) -> Self {
        Refusal {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

fn io_refusal(what: &str, err: &io::Error) -> Refusal {
    Refusal {
        code: "io",
        message: format!("{what}: {err}"),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let reports: Vec<Report> = args.files.iter().map(|path| report(path)).collect();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &reports).context("writing JSON")?;
        writeln!(out)?;
    } else {
        for report in &reports {
            print_report(&mut out, report)?;
        }
    }
    out.flush()?;
    let refused = reports.iter().any(|r| !r.ok);
    Ok(if refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn report(path: &Path) -> Report {
    let file = path.display().to_string();
    match check(path) {
        Ok((identity, summary)) => Report {
            file,
            ok: true,
            identity: Some(identity),
            summary: Some(summary),
            error: None,
        },
        Err(refusal) => Report {
            file,
            ok: false,
            identity: None,
            summary: None,
            error: Some(refusal),
        },
    }
}

fn check(path: &Path) -> Result<(Identity, Summary), Refusal> {
    let identity = identity_from_prefix(path)?;
    let file = File::open(path).map_err(|e| io_refusal("cannot open", &e))?;
    let summary = validate(BufReader::with_capacity(VALIDATE_BUFFER_BYTES, file))?;
    Ok((identity, summary))
}

/// Reads a growing prefix until `read_identity` has what it needs, as the
/// gateway does with a Store stream.
fn identity_from_prefix(path: &Path) -> Result<Identity, Refusal> {
    let mut file = File::open(path).map_err(|e| io_refusal("cannot open", &e))?;
    let mut prefix = Vec::new();
    let mut wanted = PREFIX_START_BYTES;
    loop {
        let missing = (wanted - prefix.len()) as u64;
        (&mut file)
            .take(missing)
            .read_to_end(&mut prefix)
            .map_err(|e| io_refusal("cannot read", &e))?;
        let complete = prefix.len() < wanted;
        match read_identity(&prefix, complete) {
            Err(DicomError::NeedMoreData { .. }) if !complete => wanted = wanted.saturating_mul(2),
            result => return result.map_err(Refusal::from),
        }
    }
}

fn print_report(out: &mut impl Write, report: &Report) -> io::Result<()> {
    if let Some(error) = &report.error {
        writeln!(out, "{}: refused [{}]", report.file, error.code)?;
        writeln!(out, "  {}", error.message)?;
        return writeln!(out);
    }
    writeln!(out, "{}: accepted", report.file)?;
    if let Some(id) = &report.identity {
        let ts_name = transfer_syntax_name(&id.transfer_syntax_uid)
            .map(|name| format!(" ({name})"))
            .unwrap_or_default();
        let fields = [
            ("SOP Instance UID", id.sop_instance_uid.clone()),
            ("SOP Class UID", id.sop_class_uid.clone()),
            ("Study Instance UID", id.study_instance_uid.clone()),
            ("Series Instance UID", id.series_instance_uid.clone()),
            (
                "Transfer Syntax",
                format!("{}{ts_name}", id.transfer_syntax_uid),
            ),
            ("Patient's Name", id.patient_name.clone()),
            ("Patient ID", id.patient_id.clone()),
            ("Modality", id.modality.clone()),
            ("Study Date", id.study_date.clone()),
            ("Character Set", id.specific_character_set.clone()),
        ];
        for (label, value) in fields {
            let value = if value.is_empty() {
                "-".to_string()
            } else {
                value
            };
            writeln!(out, "  {label:<20} {value}")?;
        }
    }
    if let Some(s) = &report.summary {
        writeln!(
            out,
            "  {:<20} {} bytes; data set {} bytes, {} elements, {} items, nesting {}",
            "Structure",
            s.instance_bytes,
            s.data_set_bytes,
            s.element_count,
            s.item_count,
            s.nesting_depth_max
        )?;
        if s.fragment_count == 0 {
            writeln!(
                out,
                "  {:<20} {} bytes, native",
                "Pixel Data", s.pixel_data_bytes
            )?;
        } else {
            writeln!(
                out,
                "  {:<20} {} bytes, encapsulated in {} items (offset table included)",
                "Pixel Data", s.pixel_data_bytes, s.fragment_count
            )?;
        }
    }
    writeln!(out)
}
