use std::fmt;

/// A node's role, as written in the OU of its certificate. Only the CA decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The certificate OU, also a DNS SAN: verifying the server name `shoal-manager`
    /// verifies that the server holds a manager certificate.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => "shoal-manager",
            Role::Worker => "shoal-worker",
        }
    }
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "shoal-manager" => Some(Role::Manager),
            "shoal-worker" => Some(Role::Worker),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "manager" => Some(Role::Manager),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
