//! Every problem of a configuration at once: validation runs each independent check and
//! collects what failed into [`Problems`], so an operator (and `check-config`, the systemd
//! unit's `ExecStartPre`) sees the whole list instead of fixing one field per restart.
//!
//! The error a failed validation returns is a [`ConfigProblems`]: `check-config` finds it by
//! downcasting and prints one problem per line; a daemon that fails to start prints it whole.

use std::fmt;

/// Collects the failures of independent checks.
#[derive(Default)]
pub struct Problems(Vec<anyhow::Error>);

impl Problems {
    /// The check's value, or `None` with its error kept.
    pub fn take<T>(&mut self, result: anyhow::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// Keeps a failure found outside a check (`bail!` style).
    pub fn push(&mut self, problem: anyhow::Error) {
        self.0.push(problem);
    }

    /// Whether no check has failed so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing failed; otherwise every failure, as one [`ConfigProblems`] error.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigProblems(self.0).into())
        }
    }
}

/// Every problem a configuration check found, in the order checked (at least one).
#[derive(Debug)]
pub struct ConfigProblems(pub Vec<anyhow::Error>);

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

/// The problems behind `error`, one per entry: a [`ConfigProblems`] anywhere in its chain
/// gives its list (each with the context wrapped around it, such as the file's name); any
/// other error is one problem.
pub fn problem_lines(error: &anyhow::Error) -> Vec<String> {
    let context: Vec<String> = error
        .chain()
        .take_while(|cause| cause.downcast_ref::<ConfigProblems>().is_none())
        .map(|cause| cause.to_string())
        .collect();
    match error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ConfigProblems>())
    {
        Some(problems) => {
            let prefix = context.join(": ");
            problems
                .0
                .iter()
                .map(|p| {
                    if prefix.is_empty() {
                        format!("{p:#}")
                    } else {
                        format!("{prefix}: {p:#}")
                    }
                })
                .collect()
        }
        None => vec![format!("{error:#}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn every_collected_problem_is_listed_with_the_context_around_it() {
        let mut problems = Problems::default();
        assert_eq!(problems.take(Ok::<_, anyhow::Error>(1)), Some(1));
        assert_eq!(problems.take::<u8>(Err(anyhow::anyhow!("id is bad"))), None);
        problems.push(anyhow::anyhow!("roots: none"));
        let error = problems
            .into_result()
            .context("agent configuration /etc/a.toml")
            .unwrap_err();
        assert_eq!(
            problem_lines(&error),
            [
                "agent configuration /etc/a.toml: id is bad",
                "agent configuration /etc/a.toml: roots: none"
            ]
        );
        assert_eq!(
            format!("{error:#}"),
            "agent configuration /etc/a.toml: id is bad; roots: none"
        );
    }

    #[test]
    fn an_error_that_is_not_a_problem_list_is_one_problem() {
        let error = anyhow::anyhow!("cannot read x").context("agent configuration");
        assert_eq!(
            problem_lines(&error),
            ["agent configuration: cannot read x"]
        );
        assert!(Problems::default().into_result().is_ok());
    }
}
