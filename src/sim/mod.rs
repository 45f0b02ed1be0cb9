//! `tandem sim`: a device simulator. It drives N simulated phones against Tandem
//! (or any registrar): digest-authenticated registration over UDP, RFC 3261
//! retransmissions, 503 + Retry-After, failover to a secondary and tertiary
//! registrar and re-homing to the primary (seed 002 FIG. 7), with or without
//! Tandem's registration tokens (docs/token-protocol.md). Usage: docs/sim.md.
//!
//! `phone` is the sans-IO state machine of one phone, `driver` the tokio loop
//! that runs them all, `report` the output, `profile` what phones share.

pub mod driver;
pub mod phone;
pub mod profile;
pub mod report;

use crate::sip::transaction::TimerConfig;
pub use driver::{run, Plan, RunOutcome};
pub use profile::{Mode, Profile};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// `tandem sim` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Registrar address, in order: primary, secondary, tertiary (repeat; 1 to 3).
    #[arg(long = "registrar", required = true, value_name = "ADDR")]
    pub registrars: Vec<SocketAddr>,
    /// Number of phones.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub phones: u32,
    /// Index of the first phone (users are {user_prefix}{start}..).
    #[arg(long, default_value_t = 0)]
    pub start: u32,
    #[arg(long, default_value = "sim")]
    pub user_prefix: String,
    /// Digest password, the same for every phone.
    #[arg(long, default_value = "secret")]
    pub password: String,
    /// Domain of the AORs and the REGISTER Request-URI.
    #[arg(long, default_value = "tandem.local")]
    pub domain: String,
    /// token: ask for a registration token first; plain: an unmodified phone.
    #[arg(long, value_enum, default_value_t = Mode::Token)]
    pub mode: Mode,
    /// The first K phones send `Resource-Priority: ets.0`.
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Phones started per second (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Expires asked for, in seconds (phones refresh at half of it).
    #[arg(long, default_value_t = 3600)]
    pub expires: u32,
    /// Stop after this many seconds even if phones are still busy.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// REGISTER attempts before a phone gives up (answering a 401 is not one).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// Seconds between OPTIONS pings of the primary from a backup (0: never).
    #[arg(long, default_value_t = 30)]
    pub ping_interval: u64,
    /// UDP sockets the phones share.
    #[arg(long, default_value_t = 16)]
    pub sockets: usize,
    /// Local address to bind the sockets to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// RFC 3261 T1 in ms (Timer F is 64·T1).
    #[arg(long, default_value_t = 500)]
    pub t1_ms: u64,
    /// RFC 3261 T2 in ms.
    #[arg(long, default_value_t = 4000)]
    pub t2_ms: u64,
    /// Print one line per phone before the summary.
    #[arg(long)]
    pub per_phone: bool,
    /// Print the summary as a JSON line too.
    #[arg(long)]
    pub json: bool,
}

impl SimArgs {
    /// The shared profile and the plan; an error names a bad option.
    pub fn split(&self) -> Result<(Profile, Plan), String> {
        if self.registrars.is_empty() || self.registrars.len() > phone::MAX_REGISTRARS {
            return Err("--registrar: give 1 to 3 (primary, secondary, tertiary)".into());
        }
        if self.t1_ms == 0 || self.t2_ms < self.t1_ms {
            return Err("--t1-ms must be > 0 and --t2-ms >= --t1-ms".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be >= 0".into());
        }
        let profile = Profile {
            registrars: self.registrars.clone(),
            domain: self.domain.clone(),
            user_prefix: self.user_prefix.clone(),
            password: self.password.clone(),
            expires: self.expires,
            mode: self.mode,
            ping_interval: Duration::from_secs(self.ping_interval),
            max_attempts: self.max_attempts,
            timers: TimerConfig {
                t1: Duration::from_millis(self.t1_ms),
                t2: Duration::from_millis(self.t2_ms),
                ..TimerConfig::default()
            },
            salt: rand::random(),
        };
        let plan = Plan {
            start: self.start,
            phones: self.phones,
            priority: self.priority.min(self.phones),
            rate: self.rate,
            sockets: self.sockets.max(1),
            bind: self.bind,
            duration: Duration::from_secs(self.duration),
            per_phone: self.per_phone,
        };
        Ok((profile, plan))
    }
}

/// The sub-command: runs on one thread, prints, exits 0 when every phone registered.
pub fn main(args: SimArgs) -> ExitCode {
    let (profile, plan) = match args.split() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // one core: a single-threaded runtime (the phones share no locks)
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(profile, &plan)) {
        Ok(out) => {
            for l in &out.phone_lines {
                println!("{l}");
            }
            println!("{}", out.summary.line());
            if args.json {
                println!("{}", out.summary.json());
            }
            if out.summary.all_registered() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
