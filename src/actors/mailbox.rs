//! Counted mailboxes: actix keeps no count of an address's queued
//! messages, so every message to an actor travels in a [`Counted`]
//! envelope that adds one to the actor's depth gauge when it is sent and
//! takes it off when the actor starts handling it (or when the message is
//! dropped unsent, e.g. refused by a full mailbox).

use actix::prelude::*;
use prometheus::IntGauge;

use super::config::ConfigActor;
use super::lock::LockActor;
use super::wal::{Append, WalActor};

/// Holds one unit of an actor's depth gauge until dropped.
struct Queued(IntGauge);

impl Queued {
    fn new(depth: &IntGauge) -> Queued {
        depth.inc();
        Queued(depth.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `M`, counted in its receiver's mailbox depth while it waits there.
pub struct Counted<M> {
    msg: M,
    queued: Queued,
}

impl<M> Counted<M> {
    pub fn new(msg: M, depth: &IntGauge) -> Counted<M> {
        Counted {
            msg,
            queued: Queued::new(depth),
        }
    }
}

impl<M: Message> Message for Counted<M> {
    type Result = M::Result;
}

/// A request message that `Actor` receives counted. It names its actor so
/// that `Handler<Counted<M>>` needs no `Handler<M>` bound: with one, the
/// trait solver tries `Counted<Counted<..>>` forever while it infers `M`.
pub trait Countable: Message<Result = ()> + Sized {
    type Actor: Actor;

    /// `<Actor as Handler<Self>>::handle` (see [`countable!`]).
    fn handle_by(self, actor: &mut Self::Actor, ctx: &mut <Self::Actor as Actor>::Context);
}

/// Makes request messages of `$actor` [`Countable`].
macro_rules! countable {
    ($actor:ty: $($msg:ty),+ $(,)?) => {$(
        impl $crate::actors::mailbox::Countable for $msg {
            type Actor = $actor;

            fn handle_by(self, actor: &mut $actor, ctx: &mut <$actor as actix::Actor>::Context) {
                <$actor as actix::Handler<$msg>>::handle(actor, self, ctx)
            }
        }
    )+};
}
pub(crate) use countable;

/// Handles `Counted<M>` like `M`, off the depth first: the message has
/// left the mailbox. Request messages answer through their reply channel,
/// so their handlers return `()`.
macro_rules! counted_mailbox {
    ($actor:ty) => {
        impl<M: Countable<Actor = $actor>> Handler<Counted<M>> for $actor {
            type Result = ();

            fn handle(&mut self, counted: Counted<M>, ctx: &mut Self::Context) {
                let Counted { msg, queued } = counted;
                drop(queued);
                msg.handle_by(self, ctx)
            }
        }
    };
}

counted_mailbox!(LockActor);
counted_mailbox!(ConfigActor);

impl Handler<Counted<Append>> for WalActor {
    type Result = <WalActor as Handler<Append>>::Result;

    fn handle(&mut self, counted: Counted<Append>, ctx: &mut Self::Context) -> Self::Result {
        let Counted { msg, queued } = counted;
        drop(queued);
        <WalActor as Handler<Append>>::handle(self, msg, ctx)
    }
}

/// An actor's address with its depth gauge: what the HTTP layer sends to.
pub struct Mailbox<A: Actor> {
    pub addr: Addr<A>,
    pub depth: IntGauge,
}

// Not derived: that would ask for `A: Clone`, which actors are not.
impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Mailbox<A> {
        Mailbox {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, depth: IntGauge) -> Mailbox<A> {
        Mailbox { addr, depth }
    }

    /// `try_send`s `msg` counted; a full or closed mailbox hands it back.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        A: Handler<Counted<M>>,
        A::Context: actix::dev::ToEnvelope<A, Counted<M>>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.addr
            .try_send(Counted::new(msg, &self.depth))
            .map_err(|e| match e {
                SendError::Full(c) => SendError::Full(c.msg),
                SendError::Closed(c) => SendError::Closed(c.msg),
            })
    }
}
