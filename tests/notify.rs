//! Notifications delivered to real receivers on loopback: an HTTP server that records what each
//! webhook flavour receives (method, path, headers, JSON body), a real SMTP server (Debian's
//! python3-aiosmtpd) taking mail over STARTTLS and implicit TLS, and `kured notify` end to end.
//! The services' own hosts are out of reach, so their requests go to the loopback server through
//! `Options::api_base`, which keeps each request's path and query.

mod receivers;
mod support;

use std::time::{Duration, Instant};

use kured::metrics::NotificationFailures;
use kured::notify::{Delivery, Event, Notifications, Notifier, Options, RetryPolicy, Target};
use receivers::{HttpReceiver, Reply, SmtpServer, TestCa};
use serde_json::json;
use support::cli::{Ran, kured, run};

const MESSAGE: &str = "Draining node n1";
const TITLE: &str = "Starting drain";

/// Quick retries, so that the tests of retrying take a fraction of a second.
fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        attempt_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(20),
        deadline: Duration::from_secs(20),
    }
}

fn target(url: &str) -> Target {
    Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn notifier(targets: Vec<Target>, server: &HttpReceiver, failures: &NotificationFailures) -> Notifications {
    let options = Options {
        api_base: Some(url::Url::parse(&server.base()).expect("a URL")),
        retry: fast(),
        ..Options::default()
    };
    Notifications::new(targets, options, failures.clone()).expect("a notifier")
}

/// `kured notify` to each of `urls`, with `args` besides.
fn kured_notify(urls: &[&str], args: &[&str]) -> Ran {
    let mut command = kured();
    command.arg("notify");
    for url in urls {
        command.arg(format!("--notify-url={url}"));
    }
    run(command.args(args))
}

fn assert_all_sent(deliveries: &[Delivery]) {
    for d in deliveries {
        assert_eq!(d.result, Ok(1), "{}", d.target);
    }
}

fn only(server: &HttpReceiver, prefix: &str) -> receivers::Recorded {
    let mut requests = server.requests_to(prefix);
    assert_eq!(requests.len(), 1, "requests to {prefix}: {requests:?}");
    requests.remove(0)
}

#[tokio::test]
async fn every_scheme_reaches_its_receiver_in_the_documented_format() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    server.respond(
        "/api/chat.postMessage",
        Reply::status(200, r#"{"ok":true,"channel":"C001CH4NN3L","ts":"1.2"}"#),
    );
    server.respond("/workflows/", Reply::status(202, ""));
    server.respond("/api/webhooks/", Reply::status(204, ""));
    let hook_url = url::Url::parse(&format!(
        "{}/services/T11111111/B22222222/HOOKSECRETHOOKSECRETHOOK",
        server.base()
    ))
    .expect("a URL");
    let targets = vec![
        target("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?botname=kured-bot"),
        target("slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L"),
        Target::slack_hook(hook_url, "kured", Some("#ops")),
        target(
            "teams://11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05?host=contoso.webhook.office.com&title=kured",
        ),
        target(
            "teams+https://prod-00.westeurope.logic.azure.com:443/workflows/0a1b2c3d/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSIGSIG",
        ),
        target(
            "discord://W3dE2OZz4C13_4z-uHfDOoC7BqTW288s@693853386302554172?username=kured&thread_id=1234567890123456789",
        ),
        target(&format!(
            "generic://127.0.0.1:{port}/generic/json?disabletls=yes&template=json&@Authorization=Bearer+t0ken&$cluster=prod&tenant=blue"
        )),
        target(&format!(
            "generic+http://127.0.0.1:{port}/generic/plain?@XApiKey=k3y"
        )),
        target(
            "telegram://110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw@telegram?chats=@kured,-1001234567890:42&notification=no",
        ),
        target("googlechat://chat.googleapis.com/v1/spaces/AAAA1234/messages?key=K3Y&token=T0KEN"),
        target("mattermost://kured@mm.example.com/bywsw8zt5jgpte3nm65qjiru6h/reboots"),
    ];
    let failures = NotificationFailures::default();
    let deliveries = notifier(targets, &server, &failures).send(TITLE, MESSAGE).await;
    assert_eq!(deliveries.len(), 11);
    assert_all_sent(&deliveries);

    // Slack incoming webhook: POST https://hooks.slack.com/services/T…/B…/X… with {"text": …}.
    let r = only(&server, "/services/T00000000/");
    assert_eq!(
        (r.method.as_str(), r.path()),
        ("POST", "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({ "text": MESSAGE, "username": "kured-bot" }));

    // Slack Web API: chat.postMessage with the bot token as a bearer token, the channel in the body.
    let r = only(&server, "/api/chat.postMessage");
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("authorization"),
        Some("Bearer xoxb-123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N")
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    assert_eq!(r.json(), json!({ "text": MESSAGE, "channel": "C001CH4NN3L" }));

    // --slack-hook-url: the URL as given, with --slack-username and --slack-channel.
    let r = only(&server, "/services/T11111111/");
    assert_eq!(
        r.json(),
        json!({ "text": MESSAGE, "username": "kured", "channel": "#ops" })
    );

    // Teams connector: the webhookb2 URL rebuilt from the parts, a MessageCard.
    let r = only(&server, "/webhookb2/");
    assert_eq!(
        r.path(),
        "/webhookb2/11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/IncomingWebhook/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05"
    );
    assert_eq!(
        r.json(),
        json!({ "@type": "MessageCard", "@context": "http://schema.org/extensions", "summary": "kured", "title": "kured", "text": MESSAGE })
    );

    // Teams Workflows: the workflow URL with its signature query, an Adaptive Card message.
    let r = only(&server, "/workflows/");
    assert_eq!(r.path(), "/workflows/0a1b2c3d/triggers/manual/paths/invoke");
    assert_eq!(
        r.query(),
        Some("api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSIGSIG")
    );
    let body = r.json();
    assert_eq!(body["type"], "message");
    assert_eq!(
        body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(body["attachments"][0]["contentUrl"], serde_json::Value::Null);
    assert_eq!(body["attachments"][0]["content"]["type"], "AdaptiveCard");
    assert_eq!(
        body["attachments"][0]["content"]["body"],
        json!([{ "type": "TextBlock", "text": MESSAGE, "wrap": true }])
    );

    // Discord: Execute Webhook, /api/webhooks/{id}/{token}, thread_id in the query.
    let r = only(&server, "/api/webhooks/");
    assert_eq!(
        r.path(),
        "/api/webhooks/693853386302554172/W3dE2OZz4C13_4z-uHfDOoC7BqTW288s"
    );
    assert_eq!(r.query(), Some("thread_id=1234567890123456789"));
    assert_eq!(r.json(), json!({ "content": MESSAGE, "username": "kured" }));

    // Generic with template=json: headers from @…, fields from $…, other parameters forwarded.
    let r = only(&server, "/generic/json");
    assert_eq!((r.method.as_str(), r.query()), ("POST", Some("tenant=blue")));
    assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({ "title": TITLE, "message": MESSAGE, "cluster": "prod" })
    );
    // Generic without a template: the message is the body.
    let r = only(&server, "/generic/plain");
    assert_eq!((r.text().as_str(), r.header("x-api-key")), (MESSAGE, Some("k3y")));

    // Telegram: sendMessage once per chat, a thread where the chat names one.
    let chats = server.requests_to("/bot110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage");
    assert_eq!(chats.len(), 2);
    let mut bodies: Vec<serde_json::Value> = chats.iter().map(receivers::Recorded::json).collect();
    bodies.sort_by_key(|b| b["chat_id"].to_string());
    assert_eq!(
        bodies,
        [
            json!({ "chat_id": "-1001234567890", "text": MESSAGE, "parse_mode": "HTML", "disable_notification": true, "disable_web_page_preview": false, "message_thread_id": 42 }),
            json!({ "chat_id": "@kured", "text": MESSAGE, "parse_mode": "HTML", "disable_notification": true, "disable_web_page_preview": false }),
        ]
    );

    // Google Chat: the webhook URL as it is, {"text": …}.
    let r = only(&server, "/v1/spaces/");
    assert_eq!(
        (r.path(), r.query()),
        ("/v1/spaces/AAAA1234/messages", Some("key=K3Y&token=T0KEN"))
    );
    assert_eq!(r.json(), json!({ "text": MESSAGE }));

    // Mattermost: /hooks/{token}, user and channel from the URL.
    let r = only(&server, "/hooks/");
    assert_eq!(r.path(), "/hooks/bywsw8zt5jgpte3nm65qjiru6h");
    assert_eq!(
        r.json(),
        json!({ "text": MESSAGE, "username": "kured", "channel": "reboots" })
    );

    assert_eq!(server.requests().len(), 12, "nothing else was sent");
    for scheme in [
        "slack",
        "teams",
        "discord",
        "generic",
        "telegram",
        "googlechat",
        "mattermost",
    ] {
        assert_eq!(failures.get(scheme), 0, "{scheme}");
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_refusals_are_not() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    server.script(
        "/flaky",
        vec![Reply::status(503, "busy"), Reply::status(429, "slow down")],
    );
    server.respond("/gone", Reply::status(404, "no such hook S3CRETPATH"));
    server.respond(
        "/api/chat.postMessage",
        Reply::status(200, r#"{"ok":false,"error":"invalid_auth"}"#),
    );
    let failures = NotificationFailures::default();
    let n = notifier(
        vec![
            target(&format!("generic+http://127.0.0.1:{port}/flaky")),
            target(&format!(
                "generic+http://127.0.0.1:{port}/gone/S3CRETPATH?@Authorization=S3CRETHEADER"
            )),
            target("slack://xoxb:123456789012-1234567890123-S3CRETS3CRETS3CRETS3CRET@C0123"),
        ],
        &server,
        &failures,
    );
    let deliveries = n.send(TITLE, MESSAGE).await;
    assert_eq!(deliveries[0].result, Ok(3), "503 and 429 are tried again");
    assert_eq!(server.requests_to("/flaky").len(), 3);

    let gone = deliveries[1].result.clone().expect_err("404 fails");
    assert_eq!(gone.attempts, 1, "a 404 is not tried again");
    assert!(gone.error.contains("HTTP status 404"), "{}", gone.error);
    let slack = deliveries[2].result.clone().expect_err("ok: false fails");
    assert!(slack.error.contains("invalid_auth"), "{}", slack.error);
    assert_eq!(slack.attempts, 1);
    for d in &deliveries {
        let text = format!("{} {:?}", d.target, d.result);
        assert!(!text.contains("S3CRET"), "a secret in {text}");
    }
    assert_eq!((failures.get("generic"), failures.get("slack")), (1, 1));
}

/// A receiver that accepts the message (2xx) but breaks off its answer got the message: it is not
/// sent again. A refusal that breaks off is still a refusal.
#[tokio::test]
async fn an_accepted_message_whose_answer_breaks_off_is_delivered_once() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    server.respond("/accepts", Reply::cut_off(200, "ok"));
    server.respond("/refuses", Reply::cut_off(400, "bad"));
    let failures = NotificationFailures::default();
    let n = notifier(
        vec![
            target(&format!("generic+http://127.0.0.1:{port}/accepts")),
            target(&format!("generic+http://127.0.0.1:{port}/refuses")),
        ],
        &server,
        &failures,
    );
    let deliveries = n.send(TITLE, MESSAGE).await;
    assert_eq!(deliveries[0].result, Ok(1), "{:?}", deliveries[0]);
    assert_eq!(server.requests_to("/accepts").len(), 1, "sent once");
    let refused = deliveries[1].result.clone().expect_err("a 400 fails");
    assert!(refused.error.contains("HTTP status 400"), "{}", refused.error);
    assert_eq!(refused.attempts, 1);
}

#[tokio::test]
async fn a_silent_receiver_holds_the_agent_for_a_bounded_time() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    server.respond("/silent", Reply::hang(Duration::from_secs(30)));
    let failures = NotificationFailures::default();
    // A notifier to the silent receiver alone, retrying as `retry` says.
    let silent = |retry: RetryPolicy| {
        let options = Options {
            retry,
            ..Options::default()
        };
        let url = format!("generic+http://127.0.0.1:{port}/silent");
        Notifications::new(vec![target(&url)], options, failures.clone()).expect("a notifier")
    };
    let n = silent(RetryPolicy {
        attempts: 2,
        attempt_timeout: Duration::from_millis(300),
        first_backoff: Duration::from_millis(50),
        deadline: Duration::from_secs(5),
    });
    let started = Instant::now();
    n.notify(Event::Reboot, "Rebooting node n1").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(failures.get("generic"), 1);
    assert_eq!(
        server.requests_to("/silent").len(),
        2,
        "a time-out is tried again"
    );

    // The deadline cuts retries short whatever the policy says.
    let n = silent(RetryPolicy {
        attempts: 50,
        attempt_timeout: Duration::from_millis(200),
        first_backoff: Duration::from_millis(10),
        deadline: Duration::from_millis(800),
    });
    let started = Instant::now();
    let d = n.send(TITLE, MESSAGE).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let failure = d[0].result.clone().expect_err("the deadline passes");
    assert!(failure.error.contains("gave up after"), "{}", failure.error);
    assert!(failure.attempts >= 3, "{failure}");
    assert_eq!(failures.get("generic"), 2);
}

#[tokio::test]
async fn smtp_over_starttls_with_the_aiosmtpd_command_line() {
    let ca = TestCa::create();
    let smtp = SmtpServer::cli(Some(&ca));
    let url = format!(
        "smtp://127.0.0.1:{}/?from=kured@example.com&fromname=kured&to=ops@example.com,oncall@example.com&subject=Node+reboots",
        smtp.port
    );
    let options = Options {
        extra_roots: vec![ca.root()],
        retry: fast(),
        ..Options::default()
    };
    let n =
        Notifications::new(vec![target(&url)], options, NotificationFailures::default()).expect("a notifier");
    let d = n.send(TITLE, MESSAGE).await;
    assert_eq!(d[0].result, Ok(1), "{}", smtp.output());
    // The server requires STARTTLS before MAIL (aiosmtpd's default with --tlscert), so the
    // message arrived encrypted.
    let out = smtp.output();
    for needle in [
        "Subject: Node reboots",
        "From: kured <kured@example.com>",
        "To: ops@example.com, oncall@example.com",
        "X-Peer: ",
        MESSAGE,
    ] {
        assert!(out.contains(needle), "{needle:?} not in {out}");
    }

    // Without trusting the test CA, the server's certificate is refused: no mail.
    let untrusted = Notifications::new(
        vec![target(&url)],
        Options {
            retry: fast(),
            ..Options::default()
        },
        NotificationFailures::default(),
    )
    .expect("a notifier");
    let d = untrusted.send(TITLE, "must not arrive").await;
    let failure = d[0].result.clone().expect_err("an untrusted certificate");
    assert!(failure.error.contains("certificate"), "{failure}");
    assert!(!smtp.output().contains("must not arrive"), "{failure}");
}

#[tokio::test]
async fn smtp_authenticates_only_over_tls() {
    let ca = TestCa::create();
    let roots = || Options {
        extra_roots: vec![ca.root()],
        retry: fast(),
        ..Options::default()
    };
    for implicit in [false, true] {
        let smtp = SmtpServer::authenticating(&ca, implicit, "kured", "pa$$w0rd");
        let mode = if implicit { "&encryption=ImplicitTLS" } else { "" };
        let good = format!(
            "smtp://kured:pa%24%24w0rd@127.0.0.1:{}/?from=kured@example.com&to=ops@example.com{mode}",
            smtp.port
        );
        let d = Notifications::new(vec![target(&good)], roots(), NotificationFailures::default())
            .expect("a notifier")
            .send(TITLE, MESSAGE)
            .await;
        assert_eq!(d[0].result, Ok(1), "implicit={implicit}: {}", smtp.output());
        let received = smtp.received();
        assert_eq!(received.len(), 1, "{}", smtp.output());
        let mail = &received[0];
        assert_eq!(mail["login"], "kured");
        assert_eq!(mail["tls"], true);
        assert_eq!(mail["mail_from"], "kured@example.com");
        assert_eq!(mail["rcpt_tos"], json!(["ops@example.com"]));
        let content = mail["content"].as_str().unwrap_or("");
        assert!(content.contains(&format!("Subject: {TITLE}")), "{content}");
        assert!(content.contains(MESSAGE), "{content}");

        // A wrong password is refused for good: one attempt, no secret in the error.
        let bad = good.replace("pa%24%24w0rd", "Wr0ngS3CRET");
        let failures = NotificationFailures::default();
        let d = Notifications::new(vec![target(&bad)], roots(), failures.clone())
            .expect("a notifier")
            .send(TITLE, MESSAGE)
            .await;
        let failure = d[0].result.clone().expect_err("bad credentials");
        assert!(failure.error.contains("535"), "{failure}");
        assert_eq!(failure.attempts, 1, "{failure}");
        assert!(!failure.to_string().contains("S3CRET"), "{failure}");
        assert!(!d[0].target.contains("S3CRET"), "{}", d[0].target);
        assert_eq!(failures.get("smtp"), 1);
    }
}

#[tokio::test]
async fn smtp_never_sends_a_password_unencrypted() {
    // A server without STARTTLS: mail without credentials goes through in plain text (as
    // upstream), but a password is never sent that way.
    let smtp = SmtpServer::cli(None);
    let plain = format!(
        "smtp://127.0.0.1:{}/?from=kured@example.com&to=ops@example.com",
        smtp.port
    );
    let with_password = format!(
        "smtp://kured:S3CRETPW@127.0.0.1:{}/?from=kured@example.com&to=ops@example.com",
        smtp.port
    );
    let options = || Options {
        retry: fast(),
        ..Options::default()
    };
    let n = Notifications::new(vec![target(&plain)], options(), NotificationFailures::default())
        .expect("a notifier");
    assert_eq!(n.send(TITLE, MESSAGE).await[0].result, Ok(1), "{}", smtp.output());
    assert!(smtp.output().contains(MESSAGE));

    let n = Notifications::new(
        vec![target(&with_password)],
        options(),
        NotificationFailures::default(),
    )
    .expect("a notifier");
    let d = n.send(TITLE, "with a password").await;
    let failure = d[0].result.clone().expect_err("no STARTTLS, no password");
    assert!(failure.error.contains("STARTTLS"), "{failure}");
    assert!(!failure.error.contains("S3CRETPW"), "{failure}");
    assert!(!smtp.output().contains("with a password"));
}

#[test]
fn kured_notify_reports_each_url_and_exits_0_only_if_all_got_it() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    server.respond("/refused", Reply::status(403, "forbidden"));
    let good = format!(
        "generic+http://127.0.0.1:{port}/hook/S3CRETPATH?template=json&@Authorization=Bearer+S3CRETHEADER"
    );
    let bad = format!("generic://127.0.0.1:{port}/refused/S3CRETTOO?disabletls=yes");

    let out = kured_notify(&[&good], &["--message=Hello from the test"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout,
        format!("ok      generic+http://127.0.0.1:{port}/<redacted> (1 attempt)\n")
    );
    let r = only(&server, "/hook/");
    assert_eq!(r.text(), "Hello from the test");
    assert_eq!(r.header("authorization"), Some("Bearer S3CRETHEADER"));
    assert_eq!(
        r.query(),
        Some("template=json"),
        "generic+http forwards the service's own keys"
    );

    // Through the environment, as in the agent's pod.
    let out = run(kured().arg("notify").env("KURED_NOTIFY_URL", &good));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(server.requests_to("/hook/").len(), 2);

    // One URL refused: both reported, exit 1.
    let out = kured_notify(&[&good, &bad], &[]);
    assert_eq!(out.code, Some(1), "{out}");
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ok "), "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "FAILED  generic+http://127.0.0.1:{port}/<redacted>: HTTP status 403"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 2 notification URLs failed"), "{stderr}");
    for text in [stdout, stderr] {
        assert!(!text.contains("S3CRET"), "a secret in the output: {text}");
    }
    assert_eq!(
        server.requests_to("/refused/").len(),
        1,
        "a 403 is not tried again"
    );
}

#[test]
fn kured_notify_refuses_a_bad_url_naming_the_scheme_and_not_the_secret() {
    let out = kured_notify(&["nosuch://shoutrrr:S3CRET@user"], &[]);
    assert_eq!(out.code, Some(2), "{out}");
    let stderr = &out.stderr;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown notification scheme \"nosuch\""),
        "{stderr}"
    );
    assert!(!stderr.contains("S3CRET"), "{stderr}");
    let out = kured_notify(&[], &[]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--notify-url"));
}

/// A notification URL that cannot be used never stops the agent: it starts (and gets as far as
/// its kubeconfig), logging the URL redacted with the reason.
#[test]
fn the_agent_starts_with_a_bad_notify_url_and_logs_it() {
    let out = run(kured().args([
        "--node-id=n1",
        "--notify-url=nosuch://shoutrrr:S3CRET@user",
        "--notify-url=gotify://gotify.example.com/S3CRETTOOSHORT",
        "--kubeconfig=/nonexistent/kubeconfig",
    ]));
    assert_eq!(out.code, Some(1), "{out}");
    let stderr = &out.stderr;
    assert!(
        stderr.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.iter().any(
            |l| l.contains("invalid --notify-url \"nosuch://user/<redacted>\"")
                && l.contains("unknown notification scheme \"nosuch\"")
        ),
        "{stderr}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("gotify") && l.contains("application token")),
        "{stderr}"
    );
    assert!(!stderr.contains("S3CRET"), "{stderr}");
}

/// The agent's notifier with a URL that cannot be used: every message to it is counted as
/// failed under its scheme (`unknown` for an unknown one), the other URLs get theirs.
#[tokio::test]
async fn each_message_to_an_unusable_url_is_counted_as_failed() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    let cli = kured::config::Cli::parse_from([
        "kured",
        "--node-id=n1",
        "--notify-url=nosuch://shoutrrr:S3CRET@user",
        "--notify-url=gotify://gotify.example.com/tooshort",
        &format!("--notify-url=generic+http://127.0.0.1:{port}/hook"),
    ])
    .expect("parses");
    let config = cli
        .agent
        .validate()
        .expect("a bad notification URL does not stop the agent");
    assert_eq!(config.errors.len(), 2, "{:?}", config.errors);
    let failures = NotificationFailures::default();
    let n =
        Notifications::new(config.notify_targets, Options::default(), failures.clone()).expect("a notifier");
    assert_eq!((failures.get("unknown"), failures.get("gotify")), (0, 0));
    for event in [Event::Drain, Event::Reboot] {
        n.notify(event, MESSAGE).await;
    }
    assert_eq!((failures.get("unknown"), failures.get("gotify")), (2, 2));
    assert_eq!((failures.get("generic")), 0);
    assert_eq!(server.requests_to("/hook").len(), 2, "the good URL got both");
    let d = n.send(TITLE, MESSAGE).await;
    let failure = d[0].result.clone().expect_err("unusable");
    assert!(failure.error.contains("cannot be used"), "{failure}");
    assert!(failure.error.contains("unknown notification scheme"), "{failure}");
    assert!(!format!("{} {failure}", d[0].target).contains("S3CRET"));
}

/// Sends one message to `url` through a loopback receiver and checks it got through once.
async fn send_one(server: &HttpReceiver, url: &str) -> NotificationFailures {
    let failures = NotificationFailures::default();
    let deliveries = notifier(vec![target(url)], server, &failures)
        .send(TITLE, MESSAGE)
        .await;
    assert_all_sent(&deliveries);
    failures
}

#[tokio::test]
async fn gotify_posts_the_message_with_the_application_token() {
    let server = HttpReceiver::start();
    server.respond("/gotify/message", Reply::status(200, r#"{"id":1}"#));
    let failures = send_one(
        &server,
        "gotify://gotify.example.com/gotify/AzyoeNS.D4iJLVa?priority=8",
    )
    .await;
    // Gotify's API: POST /message, the app token in X-Gotify-Key, JSON message/title/priority.
    let r = only(&server, "/gotify/message");
    assert_eq!((r.method.as_str(), r.query()), ("POST", None));
    assert_eq!(r.header("x-gotify-key"), Some("AzyoeNS.D4iJLVa"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({ "message": MESSAGE, "title": TITLE, "priority": 8 })
    );
    assert_eq!(server.requests().len(), 1);
    assert_eq!(failures.get("gotify"), 0);
}

#[tokio::test]
async fn bark_pushes_to_the_device_key() {
    let server = HttpReceiver::start();
    server.respond("/push", Reply::status(200, r#"{"code":200,"message":"success"}"#));
    send_one(&server, "bark://:D3V1CEK3Y@api.day.app/?sound=alarm&group=kured").await;
    // Bark's API: POST /push with device_key, title, body and the options in JSON.
    let r = only(&server, "/push");
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({ "device_key": "D3V1CEK3Y", "title": TITLE, "body": MESSAGE, "sound": "alarm", "group": "kured" })
    );
}

#[tokio::test]
async fn ifttt_triggers_each_event_with_the_key() {
    let server = HttpReceiver::start();
    send_one(
        &server,
        "ifttt://WebhookK3y/?events=kured_reboot,ops&value1=prod&titlevalue=3",
    )
    .await;
    // IFTTT Webhooks: POST /trigger/{event}/with/key/{key}, JSON value1..value3.
    for event in ["kured_reboot", "ops"] {
        let r = only(&server, &format!("/trigger/{event}/"));
        assert_eq!(
            (r.method.as_str(), r.path()),
            ("POST", format!("/trigger/{event}/with/key/WebhookK3y").as_str())
        );
        assert_eq!(
            r.json(),
            json!({ "value1": "prod", "value2": MESSAGE, "value3": TITLE })
        );
    }
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn join_sends_a_push_with_the_api_key_in_the_query() {
    let server = HttpReceiver::start();
    send_one(
        &server,
        "join://shoutrrr:J0INAP1K3Y@join/?devices=phone1,tablet2&icon=https://example.com/i.png",
    )
    .await;
    // Join's sendPush: the API key, devices, text and title as query parameters.
    let r = only(&server, "/_ah/api/messaging/v1/sendPush");
    assert_eq!(r.method, "POST");
    let query: Vec<(String, String)> = url::form_urlencoded::parse(r.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("apikey"), Some("J0INAP1K3Y"));
    assert_eq!(get("deviceIds"), Some("phone1,tablet2"));
    assert_eq!(get("text"), Some(MESSAGE));
    assert_eq!(get("title"), Some(TITLE));
    assert_eq!(get("icon"), Some("https://example.com/i.png"));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn ntfy_publishes_the_message_with_headers_and_basic_auth() {
    let server = HttpReceiver::start();
    send_one(
        &server,
        "ntfy://kured:Ntfy5ecret@ntfy.example.com/kured-reboots?priority=high&tags=warning,computer&firebase=no",
    )
    .await;
    // ntfy's publish: POST /<topic>, the message as the body, options as headers.
    let r = only(&server, "/kured-reboots");
    assert_eq!(r.method, "POST");
    assert_eq!(r.text(), MESSAGE);
    assert_eq!(r.header("title"), Some(TITLE));
    assert_eq!(r.header("priority"), Some("4"));
    assert_eq!(r.header("tags"), Some("warning,computer"));
    assert_eq!(r.header("firebase"), Some("no"));
    assert_eq!(r.header("cache"), None);
    // "kured:Ntfy5ecret" in base64.
    assert_eq!(r.header("authorization"), Some("Basic a3VyZWQ6TnRmeTVlY3JldA=="));
}

#[tokio::test]
async fn matrix_logs_in_joins_sends_and_logs_out() {
    let server = HttpReceiver::start();
    server.script(
        "/_matrix/client/v3/login",
        vec![
            Reply::status(
                200,
                r#"{"flows":[{"type":"m.login.sso"},{"type":"m.login.password"}]}"#,
            ),
            Reply::status(
                200,
                r#"{"access_token":"syt_ACCESSTOKEN","user_id":"@kured:example.org","device_id":"D1"}"#,
            ),
        ],
    );
    server.respond(
        "/_matrix/client/v3/join/",
        Reply::status(200, r#"{"room_id":"!joined:example.org"}"#),
    );
    server.respond(
        "/_matrix/client/v3/rooms/",
        Reply::status(200, r#"{"event_id":"$e1"}"#),
    );
    server.respond("/_matrix/client/v3/logout", Reply::status(200, "{}"));
    send_one(
        &server,
        "matrix://kured:MatrixPa55@matrix.example.org/?rooms=!abc:example.org,ops",
    )
    .await;

    let all = server.requests();
    let calls: Vec<(String, String)> = all
        .iter()
        .map(|r| (r.method.clone(), r.path().to_owned()))
        .collect();
    let call = |m: &str, p: &str| (m.to_owned(), p.to_owned());
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert_eq!(calls[0], call("GET", "/_matrix/client/v3/login"));
    assert_eq!(calls[1], call("POST", "/_matrix/client/v3/login"));
    assert_eq!(
        all[1].json(),
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "kured" }, "password": "MatrixPa55", "initial_device_display_name": "kured" })
    );
    assert_eq!(all[1].header("authorization"), None);
    // The room id as it is, the alias (a # added) joined first for its id.
    assert!(
        calls[2]
            .1
            .starts_with("/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/"),
        "{calls:?}"
    );
    assert_eq!(calls[3], call("POST", "/_matrix/client/v3/join/%23ops"));
    assert!(
        calls[4]
            .1
            .starts_with("/_matrix/client/v3/rooms/!joined:example.org/send/m.room.message/"),
        "{calls:?}"
    );
    assert_eq!(calls[5], call("POST", "/_matrix/client/v3/logout"));
    for i in [2, 4] {
        assert_eq!(all[i].method, "PUT");
        assert_eq!(all[i].json(), json!({ "msgtype": "m.text", "body": MESSAGE }));
    }
    assert_ne!(
        calls[2].1.rsplit('/').next(),
        calls[4].1.rsplit('/').next(),
        "transaction ids differ"
    );
    for r in &all[2..] {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer syt_ACCESSTOKEN"),
            "{}",
            r.target
        );
    }
}

#[tokio::test]
async fn matrix_with_an_access_token_sends_to_every_joined_room() {
    let server = HttpReceiver::start();
    server.respond(
        "/_matrix/client/v3/joined_rooms",
        Reply::status(200, r#"{"joined_rooms":["!one:example.org","!two:example.org"]}"#),
    );
    server.respond(
        "/_matrix/client/v3/rooms/!two",
        Reply::status(403, r#"{"errcode":"M_FORBIDDEN"}"#),
    );
    let failures = NotificationFailures::default();
    let deliveries = notifier(
        vec![target("matrix://:syt_T0KEN@matrix.example.org:8448/?title=kured")],
        &server,
        &failures,
    )
    .send(TITLE, MESSAGE)
    .await;
    let failure = deliveries[0].result.clone().expect_err("room two refused");
    assert!(failure.error.contains("HTTP status 403"), "{failure}");
    assert_eq!(failures.get("matrix"), 1);
    // No login with a token; both rooms tried although the second refuses.
    assert!(server.requests_to("/_matrix/client/v3/login").is_empty());
    assert!(server.requests_to("/_matrix/client/v3/logout").is_empty());
    let one = only(
        &server,
        "/_matrix/client/v3/rooms/!one:example.org/send/m.room.message/",
    );
    assert_eq!(one.method, "PUT");
    assert_eq!(one.header("authorization"), Some("Bearer syt_T0KEN"));
    assert_eq!(
        one.json(),
        json!({ "msgtype": "m.text", "body": format!("kured\n{MESSAGE}") })
    );
    assert_eq!(
        server.requests_to("/_matrix/client/v3/rooms/!two").len(),
        1,
        "a 403 is not retried"
    );
    let joined = only(&server, "/_matrix/client/v3/joined_rooms");
    assert_eq!(
        (joined.method.as_str(), joined.header("authorization")),
        ("GET", Some("Bearer syt_T0KEN"))
    );
}

#[test]
fn kured_notify_sends_to_a_gotify_server() {
    let server = HttpReceiver::start();
    let port = server.addr.port();
    let url = format!("gotify://127.0.0.1:{port}/AzyoeNS.D4iJLVa?disabletls=yes&priority=2");
    let out = kured_notify(&[&url], &["--message=Hello from the test"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout,
        format!("ok      gotify://127.0.0.1:{port}/<redacted> (1 attempt)\n")
    );
    assert!(!format!("{}{}", out.stdout, out.stderr).contains("AzyoeNS"));
    let r = only(&server, "/message");
    assert_eq!(r.header("x-gotify-key"), Some("AzyoeNS.D4iJLVa"));
    assert_eq!(
        r.json(),
        json!({ "message": "Hello from the test", "title": "kured test notification", "priority": 2 })
    );
}

/// The body of a form-encoded request, its fields in order.
fn form_fields(r: &receivers::Recorded) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pushover, Pushbullet, Rocket.Chat, Zulip and Opsgenie, each answered the way the real service
/// answers, each request checked against the service's API documentation: method, path, where
/// the credentials travel, and the body.
#[tokio::test]
async fn push_chat_and_alerting_services_get_their_documented_requests() {
    let server = HttpReceiver::start();
    server.respond(
        "/1/messages.json",
        Reply::status(
            200,
            r#"{"status":1,"request":"647d2300-702c-4b38-8b2f-d56326ae460b"}"#,
        ),
    );
    server.respond(
        "/v2/pushes",
        Reply::status(
            200,
            r#"{"active":true,"iden":"ujpah72o0sjAoRtnM0jc","type":"note"}"#,
        ),
    );
    server.respond("/hooks/", Reply::status(200, r#"{"success":true}"#));
    server.respond(
        "/api/v1/messages",
        Reply::status(200, r#"{"id":42,"msg":"","result":"success"}"#),
    );
    server.respond(
        "/v2/alerts",
        Reply::status(
            202,
            r#"{"result":"Request will be processed","took":0.302,"requestId":"43a29c5c-3dbf-4fa4-9c26-f4f71023e120"}"#,
        ),
    );
    let pushbullet_token = "o.AbCdEfGhIjKlMnOpQrStUvWxYz012345";
    let targets = vec![
        target(
            "pushover://shoutrrr:azGDORePK8gMaC0QOYAMyEEuzJnyUi@uQiRzpo4DXghDmr9QzzfQu27cmVRsG/?devices=phone,tablet&priority=1",
        ),
        target(&format!(
            "pushbullet://{pushbullet_token}/ujpah72o0sjAoRtnM0jc/#reboots?title=kured"
        )),
        target(
            "rocketchat://kured@chat.example.com/8eGdRzc9r4YYNyvge/2XYQcX9NBwJBKfQnphpebPcnXZcPEi32Nt4NKJfrnbhsbRfX/ops",
        ),
        target(
            "zulip://kured-bot%40example.com:c0rrecthorse@example.zulipchat.com/?stream=ops&topic=Reboots",
        ),
        target(
            "opsgenie://api.opsgenie.com/eb243592-faa2-4ba2-a551q-1afdf565c889?priority=P3&tags=kured,reboot&responders=team:NOC",
        ),
    ];
    let failures = NotificationFailures::default();
    let deliveries = notifier(targets, &server, &failures).send(TITLE, MESSAGE).await;
    assert_eq!(deliveries.len(), 5);
    assert_all_sent(&deliveries);

    // Pushover: a form POST to /1/messages.json; token and user key in the body.
    let r = only(&server, "/1/messages.json");
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        form_fields(&r),
        fields(&[
            ("token", "azGDORePK8gMaC0QOYAMyEEuzJnyUi"),
            ("user", "uQiRzpo4DXghDmr9QzzfQu27cmVRsG"),
            ("message", MESSAGE),
            ("device", "phone,tablet"),
            ("title", TITLE),
            ("priority", "1"),
        ])
    );

    // Pushbullet: a JSON `note` push per target, the token in the Access-Token header.
    let pushes = server.requests_to("/v2/pushes");
    assert_eq!(pushes.len(), 2);
    for r in &pushes {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("access-token"), Some(pushbullet_token));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let mut bodies: Vec<serde_json::Value> = pushes.iter().map(receivers::Recorded::json).collect();
    bodies.sort_by_key(|b| b.to_string());
    assert_eq!(
        bodies,
        [
            json!({ "type": "note", "title": "kured", "body": MESSAGE, "channel_tag": "reboots" }),
            json!({ "type": "note", "title": "kured", "body": MESSAGE, "device_iden": "ujpah72o0sjAoRtnM0jc" }),
        ]
    );

    // Rocket.Chat: the incoming webhook /hooks/{tokenA}/{tokenB}, the sender and #channel in JSON.
    let r = only(&server, "/hooks/");
    assert_eq!(
        (r.method.as_str(), r.path()),
        (
            "POST",
            "/hooks/8eGdRzc9r4YYNyvge/2XYQcX9NBwJBKfQnphpebPcnXZcPEi32Nt4NKJfrnbhsbRfX"
        )
    );
    assert_eq!(
        r.json(),
        json!({ "text": MESSAGE, "username": "kured", "channel": "#ops" })
    );

    // Zulip: POST /api/v1/messages as the bot (basic auth email:key), a form for a stream message.
    let r = only(&server, "/api/v1/messages");
    assert_eq!(r.method, "POST");
    // base64("kured-bot@example.com:c0rrecthorse")
    assert_eq!(
        r.header("authorization"),
        Some("Basic a3VyZWQtYm90QGV4YW1wbGUuY29tOmMwcnJlY3Rob3JzZQ==")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        form_fields(&r),
        fields(&[
            ("type", "stream"),
            ("to", "ops"),
            ("content", MESSAGE),
            ("topic", "Reboots"),
        ])
    );

    // Opsgenie: Create Alert, POST /v2/alerts with `Authorization: GenieKey …`; the title is the
    // alert's message, the message its description.
    let r = only(&server, "/v2/alerts");
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("authorization"),
        Some("GenieKey eb243592-faa2-4ba2-a551q-1afdf565c889")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "message": TITLE,
            "description": MESSAGE,
            "priority": "P3",
            "tags": ["kured", "reboot"],
            "responders": [{ "type": "team", "name": "NOC" }],
        })
    );

    assert_eq!(server.requests().len(), 6, "nothing else was sent");
    for scheme in ["pushover", "pushbullet", "rocketchat", "zulip", "opsgenie"] {
        assert_eq!(failures.get(scheme), 0, "{scheme}");
    }
}

/// A refusal by the service (a revoked key) fails at once, is counted under the service's scheme,
/// and no report shows the credentials.
#[tokio::test]
async fn refused_credentials_fail_once_and_stay_hidden() {
    let server = HttpReceiver::start();
    server.respond(
        "/v2/alerts",
        Reply::status(422, r#"{"message":"Key format is not valid!","took":0.001}"#),
    );
    server.respond(
        "/1/messages.json",
        Reply::status(
            400,
            r#"{"token":"invalid","errors":["application token is invalid"],"status":0}"#,
        ),
    );
    server.respond(
        "/api/v1/messages",
        Reply::status(
            401,
            r#"{"result":"error","msg":"Invalid API key","code":"INVALID_API_KEY"}"#,
        ),
    );
    let failures = NotificationFailures::default();
    let n = notifier(
        vec![
            target("opsgenie://api.opsgenie.com/S3CRETKEY-0000"),
            target("pushover://shoutrrr:S3CRETTOKEN@S3CRETUSER"),
            target("zulip://bot%40example.com:S3CRETBOTKEY@chat.example.com?stream=ops"),
        ],
        &server,
        &failures,
    );
    let deliveries = n.send(TITLE, MESSAGE).await;
    for (d, status) in deliveries.iter().zip(["422", "400", "401"]) {
        let failure = d.result.clone().expect_err("refused");
        assert_eq!(failure.attempts, 1, "{}: {failure}", d.target);
        assert!(
            failure.error.contains(&format!("HTTP status {status}")),
            "{}: {failure}",
            d.target
        );
        let text = format!("{} {failure}", d.target);
        assert!(!text.contains("S3CRET"), "a secret in {text}");
    }
    assert_eq!(server.requests().len(), 3, "one attempt each");
    for scheme in ["opsgenie", "pushover", "zulip"] {
        assert_eq!(failures.get(scheme), 1, "{scheme}");
    }
}

/// `kured notify`, the real binary, to self-hosted services over TLS: Zulip, Rocket.Chat, ntfy
/// and Opsgenie at the host and port their URLs name, a server whose certificate a private CA
/// signed, trusted through `SSL_CERT_FILE` (as Go programs such as upstream kured trust it). Each
/// request arrives as the service documents it, and the report hides every credential. Without
/// the variable, the same sends fail on the unknown certificate authority.
#[test]
fn kured_notify_reaches_self_hosted_services_over_tls_with_a_private_ca() {
    let ca = TestCa::create();
    let server = HttpReceiver::start_tls(&ca);
    server.respond(
        "/api/v1/messages",
        Reply::status(200, r#"{"result":"success","msg":"","id":42}"#),
    );
    server.respond(
        "/v2/alerts",
        Reply::status(202, r#"{"result":"Request will be processed"}"#),
    );
    let port = server.addr.port();
    let urls = [
        format!("zulip://kured%40example.com:S3CRETBOTKEY@127.0.0.1:{port}/?stream=ops&topic=reboots"),
        format!("rocketchat://127.0.0.1:{port}/S3CRETA/S3CRETB/ops"),
        format!("ntfy://127.0.0.1:{port}/reboots"),
        format!("opsgenie://127.0.0.1:{port}/S3CRETGENIEKEY"),
    ];
    let notify = |bundle: Option<&std::path::Path>| {
        let mut command = kured();
        command.arg("notify").arg("--message=Hello over TLS");
        for url in &urls {
            command.arg(format!("--notify-url={url}"));
        }
        match bundle {
            Some(path) => command.env("SSL_CERT_FILE", path),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        let out = run(&mut command);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(!text.contains("S3CRET"), "a secret in the output: {text}");
        (out.code, out.stdout)
    };

    let (code, report) = notify(Some(&ca.ca_pem));
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        4,
        "{report}"
    );

    let zulip = only(&server, "/api/v1/messages");
    assert_eq!(zulip.method, "POST");
    assert_eq!(
        zulip.header("authorization"),
        Some("Basic a3VyZWRAZXhhbXBsZS5jb206UzNDUkVUQk9US0VZ")
    );
    assert_eq!(
        form_fields(&zulip),
        fields(&[
            ("type", "stream"),
            ("to", "ops"),
            ("content", "Hello over TLS"),
            ("topic", "reboots")
        ])
    );
    let rocket = only(&server, "/hooks/S3CRETA/S3CRETB");
    assert_eq!(rocket.json()["text"], "Hello over TLS");
    assert_eq!(rocket.json()["channel"], "#ops");
    let ntfy = only(&server, "/reboots");
    assert_eq!(
        (ntfy.method.as_str(), ntfy.text().as_str()),
        ("POST", "Hello over TLS")
    );
    let genie = only(&server, "/v2/alerts");
    assert_eq!(genie.header("authorization"), Some("GenieKey S3CRETGENIEKEY"));
    assert_eq!(genie.json()["description"], "Hello over TLS");

    let before = server.requests().len();
    let (code, report) = notify(None);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("FAILED ")).count(),
        4,
        "{report}"
    );
    assert_eq!(
        server.requests().len(),
        before,
        "no request passed an unverified TLS handshake"
    );
}
