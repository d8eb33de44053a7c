#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use kured::config::{AgentArgs, Cli, Command, LogFormat, OutputFormat, ScheduleArgs};
use kured::notify::LogOnly;
use tokio::sync::watch;

/// Exit code for bad flags or environment, as clap uses for its own usage errors.
const EXIT_USAGE: u8 = 2;
/// Where Kubernetes looks for a container's last words (`kubectl describe pod`).
const TERMINATION_LOG: &str = "/dev/termination-log";

fn main() -> ExitCode {
    let cli = match Cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and exit 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let result = match cli.command {
        Some(Command::Schedule(args)) => schedule(&args),
        None => agent(&cli.agent),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            let line = format!("kured: {error:#}");
            eprintln!("{line}");
            report_termination(&line);
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

fn runtime(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

/// Writes the final error where Kubernetes shows it, when running in a pod.
fn report_termination(line: &str) {
    if std::path::Path::new(TERMINATION_LOG).exists()
        && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(TERMINATION_LOG)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn schedule(args: &ScheduleArgs) -> Result<(), Failure> {
    let window = args.window.window().map_err(usage)?;
    let at = args.at.unwrap_or_else(jiff::Timestamp::now);
    let report = window.schedule(at, usize::from(args.count));
    let out = match args.output {
        OutputFormat::Text => report.render_text(),
        OutputFormat::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .context("encoding the schedule")
                .map_err(runtime)?;
            json.push('\n');
            json
        }
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
        .map_err(runtime)
}

fn agent(args: &AgentArgs) -> Result<(), Failure> {
    let config = args.validate().map_err(usage)?;
    init_logging(config.log_format);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // The agent waits on the API server, timers and child processes; one thread does that well
    // and keeps the resident set small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(runtime)?;
    rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            match shutdown_signal().await {
                Ok(name) => tracing::info!(signal = name, "shutting down"),
                Err(e) => tracing::error!(error = %e, "cannot listen for termination signals"),
            }
            let _ = stop_tx.send(true);
        });
        let client = kube_client(config.kubeconfig.as_deref()).await.map_err(runtime)?;
        if !config.notify_urls.is_empty() || config.slack_hook_url.is_some() {
            tracing::warn!("notification URLs are accepted but not sent to yet; messages are logged");
        }
        kured::agent::run(config, client, LogOnly, stop_rx)
            .await
            .map_err(runtime)
    })
}

/// A client for the cluster: `--kubeconfig`, else KUBECONFIG or ~/.kube/config, else the pod's
/// service account.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding the cluster (no --kubeconfig, no usable KUBECONFIG or ~/.kube/config, not in a pod)",
        )?,
    };
    // kube retries 429 on its own by default, for minutes; the drain must see a PDB's 429 at once.
    config.default_retry = false;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
