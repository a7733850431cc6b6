//! A QuickJS runtime and context for one room: its heap and CPU limits,
//! the interrupt that enforces the CPU limit, `cloudflare:workers`, and the
//! prelude (the Durable Object API). The prelude and each bundle are
//! compiled once per process and loaded as bytecode by every instance.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use rquickjs::loader::{BuiltinLoader, BuiltinResolver};
use rquickjs::module::{Declared, WriteOptions};
use rquickjs::{CatchResultExt, Context, Ctx, Module, Runtime, Value};

use crate::bundle::Bundle;
use crate::instance::{ClassError, Limits, caught, engine_error};
use crate::natives;

const PRELUDE: &str = include_str!("prelude.js");
/// `import { DurableObject } from "cloudflare:workers"` gets rooms' own.
const CLOUDFLARE_WORKERS: &str = "export const DurableObject = globalThis.__roomsDurableObject;\n\
     export class WorkerEntrypoint { constructor(ctx, env) { this.ctx = ctx; this.env = env; } }\n";

/// Compiles `bundle` in a fresh runtime and checks that it exports its class.
pub(crate) fn check(bundle: &Bundle, limits: &Limits) -> Result<(), ClassError> {
    let deadline = Rc::new(Cell::new(Some(Instant::now() + limits.cpu)));
    let (_runtime, context) = engine(limits, "check", &deadline)?;
    context.with(|ctx| load_class(&ctx, bundle).map(|_| ()))
}

/// A runtime and context with the prelude evaluated.
pub(crate) fn engine(
    limits: &Limits,
    room: &str,
    deadline: &Rc<Cell<Option<Instant>>>,
) -> Result<(Runtime, Context), ClassError> {
    let runtime = Runtime::new().map_err(engine_error)?;
    runtime.set_memory_limit(limits.memory);
    runtime.set_max_stack_size(512 * 1024);
    let deadline = Rc::clone(deadline);
    runtime.set_interrupt_handler(Some(Box::new(move || {
        deadline.get().is_some_and(|until| Instant::now() > until)
    })));
    let resolver = BuiltinResolver::default().with_module("cloudflare:workers");
    let loader = BuiltinLoader::default().with_module("cloudflare:workers", CLOUDFLARE_WORKERS);
    runtime.set_loader(resolver, loader);
    let context = Context::full(&runtime).map_err(engine_error)?;
    let room = room.to_owned();
    let prelude = prelude_bytecode()?;
    context.with(|ctx| -> Result<(), ClassError> {
        natives::install(&ctx, room).map_err(engine_error)?;
        let module = load_compiled(&ctx, prelude).map_err(engine_error)?;
        let (_, evaluated) = module.eval().catch(&ctx).map_err(|e| caught(e, limits))?;
        evaluated.finish::<()>().catch(&ctx).map_err(|e| caught(e, limits))
    })?;
    Ok((runtime, context))
}

/// The prelude compiled once per process, as module bytecode without its
/// source and debug information: each instance loads it instead of parsing
/// 25 KB of JavaScript, and keeps less of it.
fn prelude_bytecode() -> Result<&'static [u8], ClassError> {
    static CODE: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let code = CODE.get_or_init(|| {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        let context = Context::full(&runtime).map_err(|e| e.to_string())?;
        context.with(|ctx| {
            let module = Module::declare(ctx.clone(), "rooms:prelude", PRELUDE)
                .map_err(|e| e.to_string())?;
            let options =
                WriteOptions { strip_source: true, strip_debug: true, ..Default::default() };
            module.write(options).map_err(|e| e.to_string())
        })
    });
    code.as_deref().map_err(|e| ClassError::Engine(format!("compiling the prelude: {e}")))
}

/// Module bytecode this process compiled itself (the prelude, a bundle).
#[allow(unsafe_code)]
fn load_compiled<'js>(ctx: &Ctx<'js>, bytes: &[u8]) -> rquickjs::Result<Module<'js, Declared>> {
    // SAFETY: QuickJS trusts bytecode it reads. These bytes were written by
    // `Module::write` of this same engine in this process (the prelude
    // above, a bundle's cache in `load_class`); nothing read from outside
    // ever gets here.
    unsafe { Module::load(ctx.clone(), bytes) }
}

/// Declares and evaluates the bundle, returning its class.
pub(crate) fn load_class<'js>(ctx: &Ctx<'js>, bundle: &Bundle) -> Result<Value<'js>, ClassError> {
    let limits = Limits::default();
    let module = match bundle.compiled.get() {
        Some(bytes) => load_compiled(ctx, bytes).map_err(engine_error)?,
        None => {
            let module = Module::declare(ctx.clone(), bundle.name(), bundle.source.as_bytes())
                .catch(ctx)
                .map_err(|e| caught(e, &limits))?;
            // Compiled once: later instances load the bytecode (with its
            // source and line numbers) instead of parsing again.
            if let Ok(bytes) = module.write(WriteOptions::default()) {
                let _ = bundle.compiled.set(bytes);
            }
            module
        }
    };
    let (module, evaluated) = module.eval().catch(ctx).map_err(|e| caught(e, &limits))?;
    evaluated.finish::<()>().catch(ctx).map_err(|e| caught(e, &limits))?;
    let class: Value<'js> = module.get(bundle.spec.class.as_str()).map_err(engine_error)?;
    if !class.is_constructor() {
        return Err(ClassError::NoClass(bundle.spec.class.clone()));
    }
    Ok(class)
}
