//! The order in which one hold quiesces its containers: dependents before what they depend on.
//!
//! A container depends on another of the same hold when both belong to one compose project
//! (`com.docker.compose.project`) and its `com.docker.compose.depends_on` label (compose v2:
//! `service:condition:restart`, comma-separated) names the other's `com.docker.compose.service`, or when its
//! network mode is `container:<id or name>` of the other (`network_mode: service:…` becomes that in the engine;
//! `service:<name>` is matched by service too). Stopping dependents first and starting them last (release and
//! `recover` both resume in reverse) means no container starts without what it needs, nor keeps writing to one
//! that is already gone. Containers with no tie keep their place; a cycle (bad labels) keeps the given order.
//!
//! The ties are read by `hold` from the engine ([`crate::docker::Runtime::links`]) right before it acts, not
//! carried in the plan: every caller that builds a [`super::Hold`] (backup, restore) gets the order without
//! change, and it follows the containers as they are, not as they were minutes ago. The order is a stable
//! topological one (always the first container in the given order whose dependents are all done), not a plain
//! Kahn queue, so containers without ties are never shuffled.

use std::collections::BTreeMap;

use crate::docker::{LABEL_COMPOSE_PROJECT, LABEL_COMPOSE_SERVICE};

/// Compose v2's dependency label.
pub const LABEL_COMPOSE_DEPENDS_ON: &str = "com.docker.compose.depends_on";

/// One container of a hold, as far as ordering needs it.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub network_mode: Option<&'a str>,
}

impl Node<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// Whether `self` depends on `other`.
    fn depends_on(&self, other: &Node<'_>) -> bool {
        let same_project = match (
            self.label(LABEL_COMPOSE_PROJECT),
            other.label(LABEL_COMPOSE_PROJECT),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        let other_service = other.label(LABEL_COMPOSE_SERVICE);
        if same_project {
            if let (Some(deps), Some(service)) =
                (self.label(LABEL_COMPOSE_DEPENDS_ON), other_service)
            {
                let named = deps
                    .split(',')
                    .filter_map(|e| e.split(':').next())
                    .any(|s| s.trim() == service);
                if named {
                    return true;
                }
            }
        }
        match self.network_mode.map(str::trim) {
            Some(m) => {
                if let Some(target) = m.strip_prefix("container:") {
                    !target.is_empty()
                        && (target == other.id
                            || target == other.name
                            || (target.len() >= 12 && other.id.starts_with(target)))
                } else if let Some(service) = m.strip_prefix("service:") {
                    same_project && other_service == Some(service)
                } else {
                    false
                }
            }
            None => false,
        }
    }
}

/// The order to quiesce `nodes` in, as indexes into `nodes`: every container after all containers of the hold
/// that depend on it, otherwise as given. `Err` carries the names of the containers in a dependency cycle; the
/// caller then keeps the given order.
pub fn stop_order(nodes: &[Node<'_>]) -> Result<Vec<usize>, Vec<String>> {
    let n = nodes.len();
    // dependents[j]: the containers that depend on j.
    let dependents: Vec<Vec<usize>> = (0..n)
        .map(|j| {
            (0..n)
                .filter(|&i| i != j && nodes[i].depends_on(&nodes[j]))
                .collect()
        })
        .collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&j| !done[j] && dependents[j].iter().all(|&i| done[i]));
        match next {
            Some(j) => {
                done[j] = true;
                order.push(j);
            }
            None => {
                return Err((0..n)
                    .filter(|&j| !done[j])
                    .map(|j| nodes[j].name.to_string())
                    .collect())
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct C {
        id: &'static str,
        name: &'static str,
        labels: BTreeMap<String, String>,
        net: Option<&'static str>,
    }

    fn c(id: &'static str, labels: &[(&str, &str)], net: Option<&'static str>) -> C {
        C {
            id,
            name: id,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            net,
        }
    }

    fn svc(id: &'static str, project: &str, deps: Option<&str>) -> C {
        let mut l = vec![
            (LABEL_COMPOSE_PROJECT, project),
            (LABEL_COMPOSE_SERVICE, id),
        ];
        if let Some(d) = deps {
            l.push((LABEL_COMPOSE_DEPENDS_ON, d));
        }
        c(id, &l, None)
    }

    fn order(cs: &[C]) -> Result<Vec<&'static str>, Vec<String>> {
        let nodes: Vec<Node<'_>> = cs
            .iter()
            .map(|c| Node {
                id: c.id,
                name: c.name,
                labels: &c.labels,
                network_mode: c.net,
            })
            .collect();
        stop_order(&nodes).map(|o| o.into_iter().map(|i| cs[i].id).collect())
    }

    #[test]
    fn two_depending_on_one_stop_before_it() {
        let cs = [
            svc("db", "p", None),
            svc("web", "p", Some("db:service_started:false")),
            svc(
                "worker",
                "p",
                Some("db:service_healthy:true,cache:service_started:false"),
            ),
        ];
        assert_eq!(order(&cs).unwrap(), ["web", "worker", "db"]);
    }

    #[test]
    fn a_chain_is_reversed() {
        let cs = [
            svc("db", "p", None),
            svc("api", "p", Some("db:service_started:false")),
            svc("web", "p", Some("api:service_started:false")),
        ];
        assert_eq!(order(&cs).unwrap(), ["web", "api", "db"]);
    }

    #[test]
    fn network_mode_container_by_id_or_name_is_a_dependency() {
        let vpn_id = "0123456789abcdef0123";
        let cs = [
            c(vpn_id, &[], None),
            c("app", &[], Some("container:0123456789ab")),
            c("vpn2", &[], None),
            c("app2", &[], Some("container:vpn2")),
        ];
        assert_eq!(order(&cs).unwrap(), ["app", vpn_id, "app2", "vpn2"]);
    }

    #[test]
    fn network_mode_service_matches_within_the_project() {
        let mut app = svc("app", "p", None);
        app.net = Some("service:vpn");
        let cs = [svc("vpn", "p", None), app, svc("other", "q", None)];
        assert_eq!(order(&cs).unwrap(), ["app", "vpn", "other"]);
    }

    #[test]
    fn another_projects_service_of_the_same_name_is_no_dependency() {
        let cs = [
            svc("db", "other", None),
            svc("web", "p", Some("db:service_started:false")),
        ];
        assert_eq!(order(&cs).unwrap(), ["db", "web"]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_members() {
        let cs = [
            svc("lone", "p", None),
            svc("a", "p", Some("b:service_started:false")),
            svc("b", "p", Some("a:service_started:false")),
        ];
        assert_eq!(order(&cs).unwrap_err(), ["a", "b"]);
    }

    #[test]
    fn a_self_dependency_is_ignored() {
        let cs = [
            svc("a", "p", Some("a:service_started:false")),
            svc("b", "p", None),
        ];
        assert_eq!(order(&cs).unwrap(), ["a", "b"]);
    }

    #[test]
    fn no_labels_keep_the_given_order() {
        let cs = [
            c("c", &[], None),
            c("a", &[], Some("bridge")),
            c("b", &[], Some("host")),
        ];
        assert_eq!(order(&cs).unwrap(), ["c", "a", "b"]);
        assert_eq!(order(&[]).unwrap(), Vec::<&str>::new());
    }
}
