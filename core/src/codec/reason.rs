//! Reason codes: one enum per packet family, so a packet can only carry a code its packet allows
//! (5.0 [MQTT-3.2.2-8], [MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1], [MQTT-3.7.2-1],
//! [MQTT-3.9.3-2], [MQTT-3.11.3-2], [MQTT-3.14.2-1], [MQTT-3.15.2-1]).
//!
//! MQTT 3.x has CONNACK return codes and SUBACK return codes only; the mapping to and from them
//! lives here too. Never: a code the spec does not list for that packet.

macro_rules! reason_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $code, )+
        }

        impl $name {
            /// Every code of this kind, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The code for a byte, if this packet allows it.
            pub const fn from_u8(code: u8) -> Option<Self> {
                match code {
                    $( $code => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The byte on the wire.
            pub const fn code(self) -> u8 {
                self as u8
            }

            /// Whether the code reports a failure (0x80 and above).
            pub const fn is_error(self) -> bool {
                self.code() >= 0x80
            }
        }

        impl From<$name> for u8 {
            fn from(reason: $name) -> u8 {
                reason.code()
            }
        }
    };
}

reason_enum! {
    /// CONNACK reason codes (5.0 section 3.2.2.2; 3.x return codes map onto a subset).
    ConnectReason {
        /// The connection is accepted.
        Success = 0x00,
        /// Unspecified error.
        UnspecifiedError = 0x80,
        /// Malformed packet.
        MalformedPacket = 0x81,
        /// Protocol error.
        ProtocolError = 0x82,
        /// Implementation specific error.
        ImplementationSpecificError = 0x83,
        /// Unsupported protocol version (3.x return code 1).
        UnsupportedProtocolVersion = 0x84,
        /// Client identifier not valid (3.x return code 2).
        ClientIdentifierNotValid = 0x85,
        /// Bad user name or password (3.x return code 4).
        BadUserNameOrPassword = 0x86,
        /// Not authorized (3.x return code 5).
        NotAuthorized = 0x87,
        /// Server unavailable (3.x return code 3).
        ServerUnavailable = 0x88,
        /// Server busy.
        ServerBusy = 0x89,
        /// Banned.
        Banned = 0x8A,
        /// Bad authentication method.
        BadAuthenticationMethod = 0x8C,
        /// Topic name invalid.
        TopicNameInvalid = 0x90,
        /// Packet too large.
        PacketTooLarge = 0x95,
        /// Quota exceeded.
        QuotaExceeded = 0x97,
        /// Payload format invalid.
        PayloadFormatInvalid = 0x99,
        /// Retain not supported.
        RetainNotSupported = 0x9A,
        /// QoS not supported.
        QoSNotSupported = 0x9B,
        /// Use another server.
        UseAnotherServer = 0x9C,
        /// Server moved.
        ServerMoved = 0x9D,
        /// Connection rate exceeded.
        ConnectionRateExceeded = 0x9F,
    }
}

impl ConnectReason {
    /// The MQTT 3.1 / 3.1.1 CONNACK return code for this reason. Codes 3.x cannot express map
    /// to the nearest one: refusals of the client's identity to 5 (not authorized), the rest to 3
    /// (server unavailable).
    pub const fn to_v3_return_code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedProtocolVersion => 1,
            Self::ClientIdentifierNotValid => 2,
            Self::BadUserNameOrPassword => 4,
            Self::NotAuthorized | Self::Banned | Self::BadAuthenticationMethod => 5,
            _ => 3,
        }
    }

    /// The reason for a 3.x CONNACK return code (0 to 5; others are reserved).
    pub const fn from_v3_return_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Success),
            1 => Some(Self::UnsupportedProtocolVersion),
            2 => Some(Self::ClientIdentifierNotValid),
            3 => Some(Self::ServerUnavailable),
            4 => Some(Self::BadUserNameOrPassword),
            5 => Some(Self::NotAuthorized),
            _ => None,
        }
    }
}

reason_enum! {
    /// PUBACK and PUBREC reason codes (5.0 sections 3.4.2.1 and 3.5.2.1 list the same codes).
    PubAckReason {
        /// The message is accepted.
        Success = 0x00,
        /// Accepted, but nobody is subscribed.
        NoMatchingSubscribers = 0x10,
        /// Unspecified error.
        UnspecifiedError = 0x80,
        /// Implementation specific error.
        ImplementationSpecificError = 0x83,
        /// Not authorized.
        NotAuthorized = 0x87,
        /// Topic name invalid.
        TopicNameInvalid = 0x90,
        /// Packet identifier in use.
        PacketIdentifierInUse = 0x91,
        /// Quota exceeded.
        QuotaExceeded = 0x97,
        /// Payload format invalid.
        PayloadFormatInvalid = 0x99,
    }
}

reason_enum! {
    /// PUBREL and PUBCOMP reason codes (5.0 sections 3.6.2.1 and 3.7.2.1 list the same codes).
    PubRelReason {
        /// Success.
        Success = 0x00,
        /// The packet identifier is unknown.
        PacketIdentifierNotFound = 0x92,
    }
}

reason_enum! {
    /// SUBACK reason codes (5.0 section 3.9.3; 3.x uses 0x00, 0x01, 0x02 and 0x80).
    SubAckReason {
        /// Granted QoS 0.
        GrantedQoS0 = 0x00,
        /// Granted QoS 1.
        GrantedQoS1 = 0x01,
        /// Granted QoS 2.
        GrantedQoS2 = 0x02,
        /// Unspecified error (the 3.x failure code).
        UnspecifiedError = 0x80,
        /// Implementation specific error.
        ImplementationSpecificError = 0x83,
        /// Not authorized.
        NotAuthorized = 0x87,
        /// Topic filter invalid.
        TopicFilterInvalid = 0x8F,
        /// Packet identifier in use.
        PacketIdentifierInUse = 0x91,
        /// Quota exceeded.
        QuotaExceeded = 0x97,
        /// Shared subscriptions not supported.
        SharedSubscriptionsNotSupported = 0x9E,
        /// Subscription identifiers not supported.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// Wildcard subscriptions not supported.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_enum! {
    /// UNSUBACK reason codes (5.0 section 3.11.3; 3.x UNSUBACK carries none).
    UnsubAckReason {
        /// The subscription is deleted.
        Success = 0x00,
        /// No such subscription existed.
        NoSubscriptionExisted = 0x11,
        /// Unspecified error.
        UnspecifiedError = 0x80,
        /// Implementation specific error.
        ImplementationSpecificError = 0x83,
        /// Not authorized.
        NotAuthorized = 0x87,
        /// Topic filter invalid.
        TopicFilterInvalid = 0x8F,
        /// Packet identifier in use.
        PacketIdentifierInUse = 0x91,
    }
}

reason_enum! {
    /// DISCONNECT reason codes (5.0 section 3.14.2.1).
    DisconnectReason {
        /// Normal disconnection: the Will is not published.
        NormalDisconnection = 0x00,
        /// Disconnect, but publish the Will.
        DisconnectWithWillMessage = 0x04,
        /// Unspecified error.
        UnspecifiedError = 0x80,
        /// Malformed packet.
        MalformedPacket = 0x81,
        /// Protocol error.
        ProtocolError = 0x82,
        /// Implementation specific error.
        ImplementationSpecificError = 0x83,
        /// Not authorized.
        NotAuthorized = 0x87,
        /// Server busy.
        ServerBusy = 0x89,
        /// Server shutting down.
        ServerShuttingDown = 0x8B,
        /// Keep alive timeout.
        KeepAliveTimeout = 0x8D,
        /// Another connection took over the session.
        SessionTakenOver = 0x8E,
        /// Topic filter invalid.
        TopicFilterInvalid = 0x8F,
        /// Topic name invalid.
        TopicNameInvalid = 0x90,
        /// Receive maximum exceeded.
        ReceiveMaximumExceeded = 0x93,
        /// Topic alias invalid.
        TopicAliasInvalid = 0x94,
        /// Packet too large.
        PacketTooLarge = 0x95,
        /// Message rate too high.
        MessageRateTooHigh = 0x96,
        /// Quota exceeded.
        QuotaExceeded = 0x97,
        /// Administrative action.
        AdministrativeAction = 0x98,
        /// Payload format invalid.
        PayloadFormatInvalid = 0x99,
        /// Retain not supported.
        RetainNotSupported = 0x9A,
        /// QoS not supported.
        QoSNotSupported = 0x9B,
        /// Use another server.
        UseAnotherServer = 0x9C,
        /// Server moved.
        ServerMoved = 0x9D,
        /// Shared subscriptions not supported.
        SharedSubscriptionsNotSupported = 0x9E,
        /// Connection rate exceeded.
        ConnectionRateExceeded = 0x9F,
        /// Maximum connect time.
        MaximumConnectTime = 0xA0,
        /// Subscription identifiers not supported.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// Wildcard subscriptions not supported.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_enum! {
    /// AUTH reason codes (5.0 section 3.15.2.1).
    AuthReason {
        /// Authentication is successful.
        Success = 0x00,
        /// Continue the authentication with another step.
        ContinueAuthentication = 0x18,
        /// Initiate a re-authentication.
        ReAuthenticate = 0x19,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reject_unlisted_bytes() {
        for byte in 0..=u8::MAX {
            if let Some(r) = DisconnectReason::from_u8(byte) {
                assert_eq!(r.code(), byte);
            }
            if let Some(r) = SubAckReason::from_u8(byte) {
                assert_eq!(r.code(), byte);
            }
        }
        assert_eq!(PubRelReason::from_u8(0x80), None);
        assert_eq!(AuthReason::ALL.len(), 3);
    }

    #[test]
    fn v3_connack_codes_map_both_ways() {
        for code in 0..=5 {
            let reason = ConnectReason::from_v3_return_code(code);
            assert_eq!(reason.map(ConnectReason::to_v3_return_code), Some(code));
        }
        assert_eq!(ConnectReason::from_v3_return_code(6), None);
    }
}
