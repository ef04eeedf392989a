//! [`Plan`]: who publishes where and who receives what, from `--layout`, `--publishers` and
//! `--subscribers`. The expected delivery counts — and so losses — follow from it.

use surgemq_core::topic::{TopicFilter, TopicName};

use crate::cli::Layout;

/// The topics and subscriptions of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Publisher i's topic.
    pub topics: Vec<TopicName>,
    /// Subscriber j's filters.
    pub filters: Vec<Vec<TopicFilter>>,
    /// Subscriber j's publishers: the ones whose messages it should receive.
    pub sources: Vec<Vec<u32>>,
}

impl Plan {
    /// The plan for `publishers` → `subscribers` under `layout`, topics under `prefix`.
    pub fn new(
        layout: Layout,
        prefix: &str,
        publishers: u32,
        subscribers: u32,
    ) -> Result<Self, String> {
        let name = |level: &str| {
            let topic = format!("{prefix}/{level}");
            TopicName::parse(&topic).map_err(|e| format!("invalid topic `{topic}`: {e}"))
        };
        let filter = |topic: &str| {
            TopicFilter::parse(topic).map_err(|e| format!("invalid topic filter `{topic}`: {e}"))
        };
        let all: Vec<u32> = (0..publishers).collect();
        let (topics, filters, sources) = match layout {
            Layout::Single => {
                let topic = name("0")?;
                let filters = vec![filter(topic.as_str())?];
                (
                    vec![topic; publishers as usize],
                    vec![filters; subscribers as usize],
                    vec![all; subscribers as usize],
                )
            }
            Layout::PerPublisher => {
                let topics = (0..publishers)
                    .map(|i| name(&i.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut filters = Vec::new();
                let mut sources = Vec::new();
                for j in 0..subscribers {
                    let source = j % publishers;
                    filters.push(vec![filter(topics[source as usize].as_str())?]);
                    sources.push(vec![source]);
                }
                (topics, filters, sources)
            }
            Layout::Wildcard => {
                let topics = (0..publishers)
                    .map(|i| name(&i.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let filters = vec![filter(&format!("{prefix}/+"))?];
                (
                    topics,
                    vec![filters; subscribers as usize],
                    vec![all; subscribers as usize],
                )
            }
        };
        Ok(Self {
            topics,
            filters,
            sources,
        })
    }

    /// Deliveries expected in all, given how many messages each publisher sent.
    pub fn expected(&self, sent: &[u64]) -> u64 {
        self.sources
            .iter()
            .flatten()
            .map(|&p| sent.get(p as usize).copied().unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_publisher_layout_fans_one_publisher_out_to_every_subscriber() {
        let plan = Plan::new(Layout::PerPublisher, "b", 1, 16).unwrap();
        assert_eq!(plan.topics.len(), 1);
        assert!(plan.sources.iter().all(|s| s == &[0]));
        assert_eq!(plan.expected(&[10]), 160);
    }

    #[test]
    fn per_publisher_layout_pairs_n_to_n() {
        let plan = Plan::new(Layout::PerPublisher, "b", 3, 3).unwrap();
        assert_eq!(plan.filters[2][0].as_str(), "b/2");
        assert_eq!(plan.expected(&[1, 2, 3]), 6);
    }

    #[test]
    fn wildcard_and_single_layouts_deliver_everything_to_everyone() {
        for layout in [Layout::Single, Layout::Wildcard] {
            let plan = Plan::new(layout, "b", 2, 3).unwrap();
            assert_eq!(plan.expected(&[5, 7]), 36, "{layout:?}");
        }
        let wildcard = Plan::new(Layout::Wildcard, "b", 2, 1).unwrap();
        assert_eq!(wildcard.filters[0][0].as_str(), "b/+");
    }
}
