//! A client on smol: subscribes to `demo/#`, publishes one message at each QoS, prints what
//! comes back. Start a broker first (`cargo run -p surgemq-smol --example broker-smol`), then:
//! `cargo run -p surgemq-smol --example client-smol -- 127.0.0.1:1883`.
use surgemq_core::codec::{QoS, SubscriptionOptions};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_smol::{Client, ClientConfig, ClientOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1883".into());
    smol::block_on(async {
        let config = ClientConfig::new(MqttString::new("surgemq-example-smol")?);
        let (client, mut messages) = Client::connect(ClientOptions::new(address, config)).await?;
        let filter = TopicFilter::parse("demo/#")?;
        let granted = client
            .subscribe(vec![(filter, SubscriptionOptions::qos(QoS::ExactlyOnce))])
            .await?;
        println!("subscribed: {granted:?}");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = TopicName::parse(&format!("demo/qos{}", qos.as_u8()))?;
            let reason = client.publish(topic, "hello", qos, false).await?;
            println!("published at {qos:?}: {reason:?}");
        }
        for _ in 0..3 {
            if let Some(m) = messages.recv().await {
                println!(
                    "{} {} (QoS {})",
                    m.publish.topic,
                    String::from_utf8_lossy(&m.publish.payload),
                    m.publish.qos.as_u8()
                );
            }
        }
        client.disconnect().await;
        Ok(())
    })
}
