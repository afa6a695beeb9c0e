//! Built-in profiles: what a platform's tokens look like, which of their claims a run token
//! carries in its `fed` object, how a run is labelled, and whether a token may be presented
//! more than once.

use serde::Deserialize;
use serde_json::{Map, Value};

/// The kind of issuer a `[[federation]]` table trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// GitHub Actions' OIDC tokens (`https://token.actions.githubusercontent.com`).
    Github,
    /// GitLab CI's `id_tokens` (`https://gitlab.com` or a self-managed instance).
    Gitlab,
    /// Kubernetes projected service-account tokens (the API server's issuer).
    Kubernetes,
    /// Any OIDC issuer: only `iss` and `sub` are carried.
    #[default]
    Generic,
}

/// GitHub Actions' claims carried into `fed`, in the order the docs list them.
const GITHUB: &[&str] = &[
    "repository",
    "repository_id",
    "repository_owner",
    "ref",
    "workflow",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "actor",
    "environment",
    "event_name",
];

/// GitLab CI's claims carried into `fed`.
const GITLAB: &[&str] = &[
    "project_path",
    "project_id",
    "namespace_path",
    "ref",
    "ref_type",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "user_login",
    "environment",
];

impl Profile {
    /// The profile's name, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Github => "github",
            Profile::Gitlab => "gitlab",
            Profile::Kubernetes => "kubernetes",
            Profile::Generic => "generic",
        }
    }

    /// Whether one external token may be traded only once, by default: true but for
    /// Kubernetes, whose kubelet hands a pod the same projected token for its whole lifetime.
    pub fn single_use(self) -> bool {
        !matches!(self, Profile::Kubernetes)
    }

    /// The claims of `token` (an external token's payload) a run token carries in `fed`,
    /// beside `iss`, `sub` and the table's name. Only strings and numbers are copied, so the
    /// object stays small and flat whatever the issuer sends.
    pub fn carried(self, token: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        let mut copy = |name: &str, value: Option<&Value>| {
            if let Some(value) = value.filter(|v| v.is_string() || v.is_number()) {
                out.insert(name.to_owned(), value.clone());
            }
        };
        match self {
            Profile::Github => GITHUB.iter().for_each(|c| copy(c, token.get(*c))),
            Profile::Gitlab => GITLAB.iter().for_each(|c| copy(c, token.get(*c))),
            Profile::Kubernetes => {
                let k8s = token.get("kubernetes.io");
                let at = |path: &[&str]| path.iter().try_fold(k8s?, |v, key| v.get(key));
                copy("namespace", at(&["namespace"]));
                copy("service_account", at(&["serviceaccount", "name"]));
                copy("pod", at(&["pod", "name"]));
                copy("node", at(&["node", "name"]));
            }
            Profile::Generic => {}
        }
        out
    }

    /// The run label a run token gets when the request names none: the external run, e.g.
    /// GitHub's `<run_id>/<run_attempt>`.
    pub fn run_label(self, token: &Map<String, Value>) -> Option<String> {
        let text = |name: &str| match token.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match self {
            Profile::Github => Some(format!("{}/{}", text("run_id")?, text("run_attempt")?)),
            Profile::Gitlab => Some(format!("{}/{}", text("pipeline_id")?, text("job_id")?)),
            Profile::Kubernetes => {
                let pod = token.get("kubernetes.io")?.get("pod")?.get("name")?;
                pod.as_str().map(str::to_owned)
            }
            Profile::Generic => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn each_profile_carries_its_claims_and_labels_its_runs() {
        let github = map(json!({
            "sub": "repo:octo-org/octo-repo:environment:prod",
            "repository": "octo-org/octo-repo", "repository_id": "74",
            "run_id": "123", "run_attempt": "2", "actor": "octocat",
            "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
            "runner_environment": "github-hosted", "nested": {"x": 1}
        }));
        let carried = Profile::Github.carried(&github);
        assert_eq!(carried["repository"], "octo-org/octo-repo");
        assert_eq!(carried["run_id"], "123");
        assert!(!carried.contains_key("runner_environment"));
        assert!(!carried.contains_key("sub"));
        assert_eq!(Profile::Github.run_label(&github).as_deref(), Some("123/2"));

        let k8s = map(json!({
            "sub": "system:serviceaccount:ci:builder",
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder", "uid": "u"},
                "pod": {"name": "builder-7f9", "uid": "p"}}
        }));
        let carried = Profile::Kubernetes.carried(&k8s);
        assert_eq!(
            Value::Object(carried),
            json!({"namespace": "ci", "service_account": "builder", "pod": "builder-7f9"})
        );
        assert_eq!(
            Profile::Kubernetes.run_label(&k8s).as_deref(),
            Some("builder-7f9")
        );
        assert!(!Profile::Kubernetes.single_use());
        assert!(Profile::Github.single_use());

        let gitlab = map(json!({"pipeline_id": 991, "job_id": 7, "project_path": "g/p"}));
        assert_eq!(Profile::Gitlab.run_label(&gitlab).as_deref(), Some("991/7"));
        assert_eq!(Profile::Generic.carried(&github).len(), 0);
        assert_eq!(
            Profile::Github.run_label(&map(json!({"run_id": "1"}))),
            None
        );
    }
}
