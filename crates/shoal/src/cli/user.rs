//! `shoal user`: the people who may work with the cluster from their own machines, each
//! with a role (viewer, deployer, operator, admin) and scopes (`*` or stack names).
//! `create` and `token` print a one-time enrollment token for `shoal login`.

use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use shoal_proto::control::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, NewUserTokenRequest, RemoveUserRequest,
    UpdateUserRequest, UserTokenResponse, UserView,
};
use std::time::Duration;

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user and print their one-time enrollment token (for 'shoal login').
    Create {
        /// viewer, deployer, operator or admin.
        #[arg(long)]
        role: String,
        /// A stack the user may work on, or '*' for everything (repeatable; default '*').
        #[arg(long = "scope", value_name = "STACK|*")]
        scopes: Vec<String>,
        /// How long the enrollment token works (default 24h).
        #[arg(long, value_parser = crate::parse_duration_pub)]
        ttl: Option<Duration>,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        name: String,
    },
    /// List users.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show users in detail (JSON); never their tokens.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change a user's role or scopes; takes effect on their next call.
    Update {
        /// viewer, deployer, operator or admin.
        #[arg(long)]
        role: Option<String>,
        #[arg(long = "scope-add", value_name = "STACK|*")]
        scope_add: Vec<String>,
        #[arg(long = "scope-rm", value_name = "STACK|*")]
        scope_rm: Vec<String>,
        name: String,
    },
    /// Remove users; their certificates are revoked at once.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Revoke one of a user's certificates (its serial, as 'user inspect' shows it).
    RevokeCertificate { name: String, serial: String },
    /// Make a new enrollment token for a user (to log in again, or on another machine).
    Token {
        /// How long the token works (default 24h).
        #[arg(long, value_parser = crate::parse_duration_pub)]
        ttl: Option<Duration>,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        name: String,
    },
}

fn user_json(u: &UserView) -> serde_json::Value {
    json!({
        "Name": u.name,
        "Role": u.role,
        "Scopes": u.scopes,
        "CreatedAt": fmt_time(u.created_at_unix),
        "UpdatedAt": fmt_time(u.updated_at_unix),
        "Enrollment": {
            "ExpiresAt": fmt_time(u.token_expires_at_unix),
            "UsedAt": (u.token_used_at_unix != 0).then(|| fmt_time(u.token_used_at_unix)),
        },
        "Certificates": u.certs.iter().map(|c| json!({
            "Serial": c.serial,
            "IssuedAt": fmt_time(c.issued_at_unix),
            "NotAfter": fmt_time(c.not_after_unix),
        })).collect::<Vec<_>>(),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ttl_secs(ttl: Option<Duration>) -> u64 {
    ttl.map(|d| d.as_secs().max(1)).unwrap_or(0)
}

fn print_token(r: &UserTokenResponse, quiet: bool) {
    if quiet {
        println!("{}", r.token);
        return;
    }
    let u = r.user.clone().unwrap_or_default();
    println!(
        "User {} ({}, scope {}). On the user's machine, within {}:\n\n    shoal login --token {} <manager address>\n\nThe token works once and is not shown again.",
        u.name,
        u.role,
        u.scopes.join(","),
        until(u.token_expires_at_unix),
        r.token
    );
}

/// "24 hours" and the like: how long from now until `unix`.
fn until(unix: i64) -> String {
    let secs = (unix - unix_now()).max(0);
    match secs {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

impl Client {
    pub async fn user(&self, cmd: UserCmd) -> Result<()> {
        let mut control = self.control();
        match cmd {
            UserCmd::Create {
                role,
                scopes,
                ttl,
                quiet,
                name,
            } => {
                let r = control
                    .create_user(CreateUserRequest {
                        name,
                        role,
                        scopes,
                        ttl_secs: ttl_secs(ttl),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_token(&r, quiet);
            }
            UserCmd::Ls { quiet } => {
                let users = control
                    .list_users(ListUsersRequest {})
                    .await
                    .map_err(status_err)?
                    .into_inner()
                    .users;
                if quiet {
                    users.iter().for_each(|u| println!("{}", u.name));
                    return Ok(());
                }
                let now = unix_now();
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "ROLE".into(),
                    "SCOPES".into(),
                    "CERTIFICATES".into(),
                    "CREATED".into(),
                ]];
                rows.extend(users.iter().map(|u| {
                    let live = u.certs.iter().filter(|c| c.not_after_unix > now).count();
                    vec![
                        u.name.clone(),
                        u.role.clone(),
                        u.scopes.join(","),
                        live.to_string(),
                        fmt_time(u.created_at_unix),
                    ]
                }));
                print_table(&rows);
            }
            UserCmd::Inspect { names } => {
                let mut out = Vec::new();
                for name in names {
                    let u = control
                        .get_user(GetUserRequest { name })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.push(user_json(&u));
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            UserCmd::Update {
                role,
                scope_add,
                scope_rm,
                name,
            } => {
                if role.is_none() && scope_add.is_empty() && scope_rm.is_empty() {
                    anyhow::bail!("nothing to change: give --role, --scope-add or --scope-rm");
                }
                let u = control
                    .update_user(UpdateUserRequest {
                        name,
                        role: role.unwrap_or_default(),
                        scopes_add: scope_add,
                        scopes_rm: scope_rm,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                println!("{} ({}, scope {})", u.name, u.role, u.scopes.join(","));
            }
            UserCmd::Rm { names } => {
                for name in names {
                    control
                        .remove_user(RemoveUserRequest { name: name.clone() })
                        .await
                        .map_err(status_err)?;
                    println!("{name}");
                }
            }
            UserCmd::RevokeCertificate { name, serial } => {
                let shown = name.clone();
                control
                    .revoke_certificate(shoal_proto::control::RevokeCertificateRequest {
                        user: name,
                        serial: serial.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?;
                println!("Certificate {serial} of user {shown} revoked.");
            }
            UserCmd::Token { ttl, quiet, name } => {
                let r = control
                    .new_user_token(NewUserTokenRequest {
                        name,
                        ttl_secs: ttl_secs(ttl),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_token(&r, quiet);
            }
        }
        Ok(())
    }
}
