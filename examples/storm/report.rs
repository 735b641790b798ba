//! What a storm reports: the table and the `STORM_RESULT` line, and the per-device outcomes that
//! `storm merge` combines when the fleet ran as several processes.

use std::path::PathBuf;
use std::time::Duration;

use crate::fleet::{time_to_percent, DeviceOutcome, Summary};

/// `#run ELAPSED SERVER_CPU GENERATOR_CPU`, then one device a line:
/// `SESSION ANSWERED INITIATIONS RESPONSES COOKIES` (seconds, or `-`).
pub fn write_outcomes(
    path: &std::path::Path,
    outcomes: &[DeviceOutcome],
    elapsed: Duration,
    server_cpu: Option<f64>,
    self_cpu: Option<f64>,
) -> std::io::Result<()> {
    use std::io::Write;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "#run {} {} {}",
        elapsed.as_secs_f64(),
        opt(server_cpu),
        opt(self_cpu)
    )?;
    for o in outcomes {
        writeln!(
            out,
            "{} {} {} {} {}",
            opt(o.session_at.map(|d| d.as_secs_f64())),
            opt(o.answered_at.map(|d| d.as_secs_f64())),
            o.initiations,
            o.responses,
            o.cookies
        )?;
    }
    out.flush()
}

/// The report of several processes' outcomes: the server's CPU is the largest of their windows
/// (all started at the same moment), the generator's the sum.
pub fn merge(files: &[PathBuf]) -> Result<(), String> {
    let mut outcomes = Vec::new();
    let (mut elapsed, mut server_cpu, mut self_cpu) = (0f64, None::<f64>, None::<f64>);
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |n: usize| format!("{} line {}: not an outcome", path.display(), n + 1);
        for (n, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let time = |f: &str| f.parse::<f64>().ok();
            if let Some(run) = line.strip_prefix("#run ") {
                let f: Vec<Option<f64>> = run.split_whitespace().map(time).collect();
                elapsed = elapsed.max(f.first().copied().flatten().unwrap_or(0.0));
                let server = f.get(1).copied().flatten();
                server_cpu = match (server_cpu, server) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if let Some(own) = f.get(2).copied().flatten() {
                    self_cpu = Some(self_cpu.unwrap_or(0.0) + own);
                }
                continue;
            }
            let [session, answered, initiations, responses, cookies] = fields[..] else {
                return Err(bad(n));
            };
            let count = |f: &str| f.parse::<u32>().map_err(|_| bad(n));
            outcomes.push(DeviceOutcome {
                session_at: time(session).map(Duration::from_secs_f64),
                answered_at: time(answered).map(Duration::from_secs_f64),
                initiations: count(initiations)?,
                responses: count(responses)?,
                cookies: count(cookies)?,
            });
        }
    }
    print_report(
        &outcomes,
        Duration::from_secs_f64(elapsed),
        server_cpu,
        self_cpu,
    );
    Ok(())
}

pub fn print_report(
    outcomes: &[DeviceOutcome],
    elapsed: Duration,
    server_cpu: Option<f64>,
    self_cpu: Option<f64>,
) {
    let summary = Summary::of(outcomes);
    let sessions: Vec<_> = outcomes.iter().map(|o| o.session_at).collect();
    let answered: Vec<_> = outcomes.iter().map(|o| o.answered_at).collect();
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3}", d.as_secs_f64()));
    let cpu = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.2}"));
    println!(
        "{} devices: {} sessions, {} echoes answered in {:.3} s",
        summary.devices,
        summary.sessions,
        summary.answered,
        elapsed.as_secs_f64()
    );
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8}",
        "seconds until", "50 %", "90 %", "99 %", "100 %"
    );
    for (name, times) in [
        ("session (response received)", &sessions),
        ("echo answered", &answered),
    ] {
        println!(
            "{:<30} {:>8} {:>8} {:>8} {:>8}",
            name,
            secs(time_to_percent(times, 50.0)),
            secs(time_to_percent(times, 90.0)),
            secs(time_to_percent(times, 99.0)),
            secs(time_to_percent(times, 100.0)),
        );
    }
    println!(
        "initiations sent {}, handshake responses {}, cookie replies {} (to {} devices); \
         server CPU {} s, generator CPU {} s",
        summary.initiations,
        summary.responses,
        summary.cookies,
        summary.devices_with_cookie,
        cpu(server_cpu),
        cpu(self_cpu)
    );
    let all = time_to_percent(&answered, 100.0);
    println!(
        "STORM_RESULT devices={} sessions={} answered={} s50={} s90={} s99={} s100={} a50={} a90={} \
         a99={} a100={} rate={} initiations={} responses={} cookies={} cookie_devices={} \
         server_cpu_s={} generator_cpu_s={} elapsed_s={:.3}",
        summary.devices,
        summary.sessions,
        summary.answered,
        secs(time_to_percent(&sessions, 50.0)),
        secs(time_to_percent(&sessions, 90.0)),
        secs(time_to_percent(&sessions, 99.0)),
        secs(time_to_percent(&sessions, 100.0)),
        secs(time_to_percent(&answered, 50.0)),
        secs(time_to_percent(&answered, 90.0)),
        secs(time_to_percent(&answered, 99.0)),
        secs(all),
        all.map_or("-".to_string(), |d| format!("{:.0}", summary.devices as f64 / d.as_secs_f64())),
        summary.initiations,
        summary.responses,
        summary.cookies,
        summary.devices_with_cookie,
        cpu(server_cpu),
        cpu(self_cpu),
        elapsed.as_secs_f64()
    );
}
