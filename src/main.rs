#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use kured::config::{
    AgentArgs, Cli, Command, ControlArgs, LogFormat, NotifyArgs, OperatorArgs, OutputFormat, RebootArgs,
    ScheduleArgs, StatusArgs,
};
use kured::metrics::NotificationFailures;
use kured::notify::{Delivery, Notifications, Options};
use tokio::sync::watch;

/// Exit code for bad flags or environment, as clap uses for its own usage errors.
const EXIT_USAGE: u8 = 2;
/// Where Kubernetes looks for a container's last words (`kubectl describe pod`).
const TERMINATION_LOG: &str = "/dev/termination-log";
/// When the agent hands the pages of its start-up code back: after its first pass, long before
/// the next one at any sensible --period.
const RELEASE_START_UP_PAGES: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    // Before anything else runs: from here on, each page of the binary is read in only when it is
    // first executed, so the code an agent never runs does not take memory. A hint; if the kernel
    // refuses it, everything works as before.
    let _ = kured::random_access_to_own_binary();
    let cli = match Cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and exit 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let overrides = &cli.env_overrides;
    let result = match &cli.command {
        Some(Command::Schedule(args)) => {
            warn_plainly(overrides);
            schedule(args)
        }
        Some(Command::Notify(args)) => notify(args, overrides),
        Some(Command::Status(args)) => {
            warn_plainly(overrides);
            status(args)
        }
        Some(Command::Pause(args)) => {
            warn_plainly(overrides);
            control(Control::Pause, args)
        }
        Some(Command::Resume(args)) => {
            warn_plainly(overrides);
            control(Control::Resume, args)
        }
        Some(Command::Reboot(args)) => {
            warn_plainly(overrides);
            reboot(args)
        }
        None => agent(&cli.agent, overrides),
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

/// The agent and the commands wait on the API server, timers and child processes; one thread
/// does that well and keeps the resident set small.
fn async_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(runtime)
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

/// How often `kured status --watch` refreshes.
const STATUS_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

fn status(args: &StatusArgs) -> Result<(), Failure> {
    use kured::status::{gather, render_text};
    use std::io::IsTerminal;
    let lock = args.cluster.lock_object().map_err(usage)?;
    let rt = async_runtime()?;
    rt.block_on(async {
        let client = kube_client(args.cluster.kubeconfig.as_deref())
            .await
            .map_err(runtime)?;
        let tty = std::io::stdout().is_terminal();
        loop {
            let status = gather(&client, &lock, jiff::Timestamp::now())
                .await
                .map_err(runtime)?;
            let mut out = match args.output {
                OutputFormat::Text => render_text(&status),
                OutputFormat::Json => serde_json::to_string(&status)
                    .context("encoding the status")
                    .map_err(runtime)?,
            };
            if args.watch && tty && args.output == OutputFormat::Text {
                // Redraw in place: cursor home, clear screen.
                out.insert_str(0, "\x1b[H\x1b[2J");
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("writing to stdout")
                .map_err(runtime)?;
            if !args.watch {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(STATUS_REFRESH) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
}

/// `kured pause|resume [NODE]`: one line on stdout saying what changed.
fn control(control: Control, args: &ControlArgs) -> Result<(), Failure> {
    let lock = args.cluster.lock_object().map_err(usage)?;
    let target = match &args.node {
        Some(node) => kured::control::Target::Node(node),
        None => kured::control::Target::Fleet(&lock),
    };
    operator_change(&args.cluster, |client| async move {
        match control {
            Control::Pause => kured::control::pause(&client, target).await,
            Control::Resume => kured::control::resume(&client, target).await,
        }
    })
}

/// `kured reboot NODE`.
fn reboot(args: &RebootArgs) -> Result<(), Failure> {
    // A request on the Node needs no lock object; its flags are checked as every command's.
    args.cluster.lock_object().map_err(usage)?;
    operator_change(&args.cluster, |client| async move {
        kured::control::request_reboot(&client, &args.node).await
    })
}

/// Runs one change with the operator's credentials and prints the line it returns; its error,
/// on one line, is the command's.
fn operator_change<F, Fut>(cluster: &OperatorArgs, change: F) -> Result<(), Failure>
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<String, kured::control::ControlError>>,
{
    let rt = async_runtime()?;
    let line = rt.block_on(async {
        let client = kube_client(cluster.kubeconfig.as_deref())
            .await
            .map_err(runtime)?;
        change(client)
            .await
            .map_err(|e| runtime(anyhow::anyhow!(kured::error_chain(&e))))
    })?;
    std::io::stdout()
        .write_all(format!("{line}\n").as_bytes())
        .context("writing to stdout")
        .map_err(runtime)
}

/// The title of `kured notify`'s message, where a service shows one (an e-mail's subject).
const TEST_TITLE: &str = "kured test notification";

/// `kured notify`: one message to each URL, a line per URL on stdout, exit 0 only if all got it.
/// Warnings of the commands that print their result on stdout: one line each on stderr.
fn warn_plainly(warnings: &[String]) {
    for warning in warnings {
        eprintln!("kured: warning: {warning}");
    }
}

fn notify(args: &NotifyArgs, overrides: &[String]) -> Result<(), Failure> {
    let (targets, warnings) = args.targets().map_err(usage)?;
    init_logging(LogFormat::Text);
    for warning in overrides.iter().chain(&warnings) {
        tracing::warn!("{warning}");
    }
    let rt = async_runtime()?;
    let deliveries = rt.block_on(async {
        let notifier = Notifications::new(targets, Options::default(), NotificationFailures::default())
            .map_err(runtime)?;
        Ok::<_, Failure>(notifier.send(TEST_TITLE, &args.message).await)
    })?;
    let report: String = deliveries.iter().map(report_line).collect();
    std::io::stdout()
        .write_all(report.as_bytes())
        .context("writing to stdout")
        .map_err(runtime)?;
    let failed = deliveries.iter().filter(|d| d.result.is_err()).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(runtime(anyhow::anyhow!(
            "{failed} of {} notification URLs failed",
            deliveries.len()
        )))
    }
}

fn report_line(d: &Delivery) -> String {
    match &d.result {
        Ok(attempts) => {
            let plural = if *attempts == 1 { "" } else { "s" };
            format!("ok      {} ({attempts} attempt{plural})\n", d.target)
        }
        Err(failure) => format!("FAILED  {}: {failure}\n", d.target),
    }
}

fn agent(args: &AgentArgs, overrides: &[String]) -> Result<(), Failure> {
    let config = args.validate().map_err(usage)?;
    init_logging(config.log_format);
    for warning in overrides.iter().chain(&config.warnings) {
        tracing::warn!("{warning}");
    }
    for error in &config.errors {
        tracing::error!("{error}; the agent runs on, and each notification to this URL is counted as failed");
    }
    let rt = async_runtime()?;
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
        let metrics = std::sync::Arc::new(kured::metrics::Metrics::new(&config.node_id));
        let notifier = Notifications::new(
            config.notify_targets.clone(),
            Options::default(),
            metrics.notification_failures(),
        )
        .map_err(runtime)?;
        tracing::info!(targets = ?notifier.targets(), "notifications");
        // Most of the binary's code (flag parsing, the kubeconfig, TLS set-up) runs once, at
        // start; its pages need not stay in memory for the weeks the agent then idles.
        tokio::spawn(async {
            tokio::time::sleep(RELEASE_START_UP_PAGES).await;
            match kured::release_own_binary_pages() {
                Ok(bytes) => tracing::debug!(bytes, "start-up code pages released"),
                Err(e) => tracing::debug!(error = %e, "cannot release start-up code pages"),
            }
        });
        kured::agent::run(config, client, notifier, metrics, stop_rx)
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
    // Colours only for a person at a terminal: `kubectl logs` and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.event_format(kured::logformat::SlogJson).init(),
    }
}
