//! The byte budget of one template render.
//!
//! Fuel counts minijinja instructions, not bytes, and one instruction can build a value
//! of any size: `s ~ s` doubles a string, `[l, l] | tojson` doubles a document,
//! `'' | replace('', x)` multiplies, and `[] * n` loops `n` times. A few dozen of them
//! take all the controller's memory or time (found by fuzzing). So a template is compiled
//! here with minijinja's own parser and code generator, and every instruction whose cost
//! grows with its operands (`~`, `+`, `*`, comparisons, `in`, subscripts, slices, list
//! and map literals) becomes a call to a function of ours that bounds what it is about to
//! build, has minijinja build it, and charges what was built. Every filter, test and
//! function and every value written out is charged the same way, against one budget per
//! render ([`BUDGET`]). Raw template text written out costs one unit of fuel whatever its
//! length, so the fuel of a template is lowered until fuel × its longest raw text that
//! can repeat (inside a loop, macro or block) fits the budget too.
//!
//! What a template can still do: at most [`FUEL`](super::FUEL) instructions, each doing
//! work bounded by what it is charged, and hold at most a small multiple of the budget.

use std::cell::Cell;
use std::ops::Range;
use std::sync::LazyLock;

use minijinja::machinery::WhitespaceConfig;
use minijinja::machinery::{self, ast, CodeGenerator, Instruction, Instructions, Vm};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Expression, State, UndefinedBehavior};

/// Bytes one render may build, write out or walk through.
pub const BUDGET: u64 = 16 << 20;
/// The deepest lists and maps a template may nest (its values are written out and
/// dropped recursively, so depth is stack).
pub const MAX_DEPTH: usize = 32;
/// The widest `indent` a template may ask for: minijinja's own `indent` repeats a space
/// `width` times unchecked (`indent(7020006000700806)` made the allocator abort).
pub const MAX_INDENT: usize = 1024;
/// The widest `tojson(indent=…)`.
const MAX_JSON_INDENT: u64 = 16;
/// Names of the functions the rewritten instructions call; templates may not use them.
const RESERVED: &str = "__substruct_";
/// What one list or map entry costs, whatever it holds.
const ENTRY: u64 = 16;

thread_local! {
    /// Bytes left in the budget of the render running on this thread.
    static LEFT: Cell<u64> = const { Cell::new(0) };
}

/// Why a render failed, and where when minijinja's error does not say (the folding of
/// constant expressions is charged before any instruction exists).
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    line: Option<usize>,
    range: Option<Range<usize>>,
}

impl Failure {
    pub fn line(&self) -> Option<usize> {
        self.error.line().or(self.line)
    }

    pub fn range(&self) -> Option<Range<usize>> {
        self.error.range().or_else(|| self.range.clone())
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            error,
            line: None,
            range: None,
        }
    }
}

/// Renders `source` against `context` under the budget and `fuel`.
pub fn render(
    which: &'static str,
    source: &str,
    context: Value,
    fuel: u64,
) -> Result<String, Failure> {
    if let Some(at) = source.find(RESERVED) {
        return Err(Failure {
            error: Error::new(
                ErrorKind::InvalidOperation,
                format!("names beginning with `{RESERVED}` are reserved"),
            ),
            line: Some(source[..at].matches('\n').count() + 1),
            range: Some(at..at + RESERVED.len()),
        });
    }
    let whitespace = WhitespaceConfig {
        keep_trailing_newline: true,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    let _budget = Budget::start();
    // A unit struct unless minijinja's `custom_syntax` feature is on.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    let tree = machinery::parse(source, which, syntax, whitespace)?;
    let mut at = None;
    visit_stmt(&tree, &mut |e| {
        charge_fold(e).inspect_err(|_| at = Some(e.span()))
    })
    .map_err(|error| Failure {
        error,
        line: at.map(|s| usize::from(s.start_line)),
        range: at.map(|s| s.start_offset as usize..s.end_offset as usize),
    })?;
    let repeated = longest_repeated_raw(&tree, false) as u64;
    let fuel = fuel.min(BUDGET / repeated.max(1)).max(1);
    let mut generator = CodeGenerator::new(which, source);
    generator.compile_stmt(&tree);
    let (mut instructions, mut blocks) = generator.finish();
    rewrite(&mut instructions)?;
    for block in blocks.values_mut() {
        rewrite(block)?;
    }
    let env = environment(fuel);
    let mut rendered = String::new();
    let mut out = machinery::make_string_output(&mut rendered);
    Vm::new(&env).eval(&instructions, context, &blocks, &mut out, AutoEscape::None)?;
    drop(out);
    Ok(rendered)
}

/// The budget of the render on this thread, for as long as it lives.
struct Budget;

impl Budget {
    fn start() -> Budget {
        LEFT.set(BUDGET);
        Budget
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        LEFT.set(0);
    }
}

fn spent(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} needs more than is left of the render's budget of {} MiB",
            BUDGET >> 20
        ),
    )
}

/// Fails if `bytes` are more than is left, without spending them.
fn ensure(what: &str, bytes: u64) -> Result<(), Error> {
    if bytes > LEFT.get() {
        return Err(spent(what));
    }
    Ok(())
}

/// Spends `bytes` of the budget.
fn charge(what: &str, bytes: u64) -> Result<(), Error> {
    let left = LEFT.get();
    if bytes > left {
        return Err(spent(what));
    }
    LEFT.set(left - bytes);
    Ok(())
}

/// What walking a value found: an upper bound of its length written out as text or
/// JSON, its nodes and its depth.
#[derive(Debug, Default, Clone, Copy)]
struct Size {
    bytes: u64,
    nodes: u64,
    depth: usize,
}

/// Walks `value` (without recursion), stopping with an error once it is larger than
/// what is left of the budget or deeper than [`MAX_DEPTH`]. A string inside a list or
/// map counts six bytes a byte (the longest escape, `\u0000`); a string on its own counts
/// its length.
fn walk(what: &str, value: &Value) -> Result<Size, Error> {
    let limit = LEFT.get();
    let mut size = Size::default();
    let mut todo = vec![(value.clone(), 0usize)];
    let add = |size: &mut Size, bytes: u64| {
        size.bytes = size.bytes.saturating_add(bytes);
        size.nodes += 1;
        if size.bytes > limit || size.nodes.saturating_mul(ENTRY) > limit {
            Err(spent(what))
        } else {
            Ok(())
        }
    };
    while let Some((value, depth)) = todo.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what}: lists and maps nest at most {MAX_DEPTH} deep"),
            ));
        }
        size.depth = size.depth.max(depth);
        let scale = if depth == 0 { 1 } else { 6 };
        let bytes = match value.kind() {
            ValueKind::String => value.as_str().map_or(0, str::len) as u64 * scale + 2,
            ValueKind::Bytes => value.as_bytes().map_or(0, <[u8]>::len) as u64 * 6 + 2,
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => match value.try_iter() {
                Ok(items) => {
                    let map = value.kind() == ValueKind::Map;
                    for item in items {
                        add(&mut size, 2)?;
                        if map {
                            let entry = value.get_item(&item).unwrap_or_default();
                            todo.push((entry, depth + 1));
                        }
                        todo.push((item, depth + 1));
                    }
                    2
                }
                Err(_) => 40,
            },
            _ => 40,
        };
        add(&mut size, bytes)?;
    }
    Ok(size)
}

/// The longest raw text that can be written out more than once: inside a loop, a
/// macro, a call block or a block.
fn longest_repeated_raw(stmt: &ast::Stmt<'_>, repeated: bool) -> usize {
    let all = |body: &[ast::Stmt<'_>], repeated: bool| {
        body.iter()
            .map(|s| longest_repeated_raw(s, repeated))
            .max()
            .unwrap_or(0)
    };
    match stmt {
        ast::Stmt::Template(t) => all(&t.children, repeated),
        ast::Stmt::EmitRaw(raw) if repeated => raw.raw.len(),
        ast::Stmt::ForLoop(f) => all(&f.body, true).max(all(&f.else_body, true)),
        ast::Stmt::IfCond(i) => all(&i.true_body, repeated).max(all(&i.false_body, repeated)),
        ast::Stmt::WithBlock(w) => all(&w.body, repeated),
        ast::Stmt::SetBlock(s) => all(&s.body, repeated),
        ast::Stmt::AutoEscape(a) => all(&a.body, repeated),
        ast::Stmt::FilterBlock(f) => all(&f.body, repeated),
        ast::Stmt::Block(b) => all(&b.body, true),
        ast::Stmt::Macro(m) => all(&m.body, true),
        ast::Stmt::CallBlock(c) => all(&c.macro_decl.body, true),
        _ => 0,
    }
}

/// Charges what minijinja's code generator will build when it folds a constant
/// expression (`'a' * 99999999`, `[] * 30702000600001`, `'x' ~ 'y'`): it does so while
/// compiling, before any instruction runs. Called innermost first, so the operands
/// folded here have been charged already.
fn charge_fold(expr: &ast::Expr<'_>) -> Result<(), Error> {
    use ast::BinOpKind as Op;
    match expr {
        ast::Expr::BinOp(op) => {
            let (Some(a), Some(b)) = (op.left.as_const(), op.right.as_const()) else {
                return Ok(());
            };
            let cost = match op.op {
                Op::Mul => {
                    refuse_empty_repetition(&a, &b)?;
                    mul_cost(&a, &b)
                }
                Op::Add => add_cost(&a, &b),
                Op::Concat | Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::In => {
                    read_cost("a constant expression", &a, &b)?
                }
                _ => 0,
            };
            charge("a constant expression", cost)
        }
        ast::Expr::Compare(c) => {
            let Some(first) = c.expr.as_const() else {
                return Ok(());
            };
            let mut cost = walk("a constant comparison", &first)?.bytes;
            for op in &c.ops {
                if let Some(value) = op.expr.as_const() {
                    cost = cost.saturating_add(walk("a constant comparison", &value)?.bytes);
                }
            }
            charge("a constant comparison", cost)
        }
        ast::Expr::List(l) => charge("a list", (l.items.len() as u64 + 1) * ENTRY),
        ast::Expr::Map(m) => charge("a map", (m.keys.len() as u64 + 1) * ENTRY),
        _ => Ok(()),
    }
}

type Visit<'f> = dyn FnMut(&ast::Expr<'_>) -> Result<(), Error> + 'f;

/// Calls `f` on every expression of `stmt`, children before their parent.
fn visit_stmt(stmt: &ast::Stmt<'_>, f: &mut Visit<'_>) -> Result<(), Error> {
    let body = |stmts: &[ast::Stmt<'_>], f: &mut Visit<'_>| -> Result<(), Error> {
        stmts.iter().try_for_each(|s| visit_stmt(s, f))
    };
    match stmt {
        ast::Stmt::Template(t) => body(&t.children, f),
        ast::Stmt::EmitExpr(e) => visit_expr(&e.expr, f),
        ast::Stmt::ForLoop(l) => {
            visit_expr(&l.target, f)?;
            visit_expr(&l.iter, f)?;
            if let Some(e) = &l.filter_expr {
                visit_expr(e, f)?;
            }
            body(&l.body, f)?;
            body(&l.else_body, f)
        }
        ast::Stmt::IfCond(i) => {
            visit_expr(&i.expr, f)?;
            body(&i.true_body, f)?;
            body(&i.false_body, f)
        }
        ast::Stmt::WithBlock(w) => {
            for (target, value) in &w.assignments {
                visit_expr(target, f)?;
                visit_expr(value, f)?;
            }
            body(&w.body, f)
        }
        ast::Stmt::Set(s) => {
            visit_expr(&s.target, f)?;
            visit_expr(&s.expr, f)
        }
        ast::Stmt::SetBlock(s) => {
            visit_expr(&s.target, f)?;
            if let Some(e) = &s.filter {
                visit_expr(e, f)?;
            }
            body(&s.body, f)
        }
        ast::Stmt::AutoEscape(a) => {
            visit_expr(&a.enabled, f)?;
            body(&a.body, f)
        }
        ast::Stmt::FilterBlock(b) => {
            visit_expr(&b.filter, f)?;
            body(&b.body, f)
        }
        ast::Stmt::Block(b) => body(&b.body, f),
        ast::Stmt::Import(i) => {
            visit_expr(&i.expr, f)?;
            visit_expr(&i.name, f)
        }
        ast::Stmt::FromImport(i) => {
            visit_expr(&i.expr, f)?;
            for (name, alias) in &i.names {
                visit_expr(name, f)?;
                if let Some(a) = alias {
                    visit_expr(a, f)?;
                }
            }
            Ok(())
        }
        ast::Stmt::Extends(e) => visit_expr(&e.name, f),
        ast::Stmt::Include(i) => visit_expr(&i.name, f),
        ast::Stmt::Macro(m) => visit_macro(m, f),
        ast::Stmt::CallBlock(c) => {
            visit_call(&c.call, f)?;
            visit_macro(&c.macro_decl, f)
        }
        ast::Stmt::Do(d) => visit_call(&d.call, f),
        // Raw text, and `continue` and `break` where the feature is on.
        _ => Ok(()),
    }
}

fn visit_macro(m: &ast::Macro<'_>, f: &mut Visit<'_>) -> Result<(), Error> {
    for e in m.args.iter().chain(&m.defaults) {
        visit_expr(e, f)?;
    }
    m.body.iter().try_for_each(|s| visit_stmt(s, f))
}

fn visit_call(call: &ast::Call<'_>, f: &mut Visit<'_>) -> Result<(), Error> {
    visit_expr(&call.expr, f)?;
    visit_args(&call.args, f)
}

fn visit_args(args: &[ast::CallArg<'_>], f: &mut Visit<'_>) -> Result<(), Error> {
    for arg in args {
        match arg {
            ast::CallArg::Pos(e)
            | ast::CallArg::Kwarg(_, e)
            | ast::CallArg::PosSplat(e)
            | ast::CallArg::KwargSplat(e) => visit_expr(e, f)?,
        }
    }
    Ok(())
}

fn visit_expr(expr: &ast::Expr<'_>, f: &mut Visit<'_>) -> Result<(), Error> {
    let opt = |e: &Option<ast::Expr<'_>>, f: &mut Visit<'_>| match e {
        Some(e) => visit_expr(e, f),
        None => Ok(()),
    };
    match expr {
        ast::Expr::Var(_) | ast::Expr::Const(_) => {}
        ast::Expr::Slice(s) => {
            visit_expr(&s.expr, f)?;
            opt(&s.start, f)?;
            opt(&s.stop, f)?;
            opt(&s.step, f)?;
        }
        ast::Expr::UnaryOp(u) => visit_expr(&u.expr, f)?,
        ast::Expr::BinOp(b) => {
            visit_expr(&b.left, f)?;
            visit_expr(&b.right, f)?;
        }
        ast::Expr::Compare(c) => {
            visit_expr(&c.expr, f)?;
            for op in &c.ops {
                visit_expr(&op.expr, f)?;
            }
        }
        ast::Expr::IfExpr(i) => {
            visit_expr(&i.test_expr, f)?;
            visit_expr(&i.true_expr, f)?;
            opt(&i.false_expr, f)?;
        }
        ast::Expr::Filter(x) => {
            opt(&x.expr, f)?;
            visit_args(&x.args, f)?;
        }
        ast::Expr::Test(t) => {
            visit_expr(&t.expr, f)?;
            visit_args(&t.args, f)?;
        }
        ast::Expr::GetAttr(g) => visit_expr(&g.expr, f)?,
        ast::Expr::GetItem(g) => {
            visit_expr(&g.expr, f)?;
            visit_expr(&g.subscript_expr, f)?;
        }
        ast::Expr::Call(c) => visit_call(c, f)?,
        ast::Expr::List(l) => l.items.iter().try_for_each(|e| visit_expr(e, f))?,
        ast::Expr::Map(m) => m
            .keys
            .iter()
            .chain(&m.values)
            .try_for_each(|e| visit_expr(e, f))?,
    }
    f(expr)
}

/// The function each growing instruction becomes, and how many operands it takes.
const CONCAT: &str = "__substruct_concat";
const ADD: &str = "__substruct_add";
const MUL: &str = "__substruct_mul";
const EQ: &str = "__substruct_eq";
const NE: &str = "__substruct_ne";
const LT: &str = "__substruct_lt";
const LTE: &str = "__substruct_lte";
const GT: &str = "__substruct_gt";
const GTE: &str = "__substruct_gte";
const IN: &str = "__substruct_in";
const ITEM: &str = "__substruct_item";
const SLICE: &str = "__substruct_slice";
const LIST: &str = "__substruct_list";
const MAP: &str = "__substruct_map";

/// Replaces, one for one (no jump moves), each instruction whose cost grows with its
/// operands by a call to the function of ours that charges it.
fn rewrite(instructions: &mut Instructions<'_>) -> Result<(), Failure> {
    for at in 0..instructions.len() {
        let Ok(at) = u32::try_from(at) else {
            break;
        };
        let refuse = |instructions: &Instructions<'_>, message: &'static str| {
            let span = instructions.get_span(at);
            Failure {
                error: Error::new(ErrorKind::InvalidOperation, message),
                line: instructions.get_line(at),
                range: span.map(|s| s.start_offset as usize..s.end_offset as usize),
            }
        };
        let Some(instruction) = instructions.get_mut(at) else {
            break;
        };
        let too_many = "too many items in one literal";
        let (name, args) = match instruction {
            Instruction::StringConcat => (CONCAT, Some(2)),
            Instruction::Add => (ADD, Some(2)),
            Instruction::Mul => (MUL, Some(2)),
            Instruction::Eq => (EQ, Some(2)),
            Instruction::Ne => (NE, Some(2)),
            Instruction::Lt => (LT, Some(2)),
            Instruction::Lte => (LTE, Some(2)),
            Instruction::Gt => (GT, Some(2)),
            Instruction::Gte => (GTE, Some(2)),
            Instruction::In => (IN, Some(2)),
            Instruction::GetItem => (ITEM, Some(2)),
            Instruction::Slice => (SLICE, Some(4)),
            Instruction::BuildList(None) => (LIST, None),
            Instruction::BuildList(Some(n)) => match u16::try_from(*n) {
                Ok(n) => (LIST, Some(n)),
                Err(_) => return Err(refuse(instructions, too_many)),
            },
            Instruction::BuildMap(pairs) => {
                match pairs.checked_mul(2).and_then(|n| u16::try_from(n).ok()) {
                    Some(n) => (MAP, Some(n)),
                    None => return Err(refuse(instructions, too_many)),
                }
            }
            Instruction::CompareAndPreserve(_) => {
                return Err(refuse(
                    instructions,
                    "chained comparisons (`a < b < c`) are not supported: join them with `and`",
                ))
            }
            _ => continue,
        };
        *instruction = Instruction::CallFunction(name, args);
    }
    Ok(())
}

/// minijinja's own operators, compiled once, which the rewritten instructions call
/// after charging: the results are exactly minijinja's.
struct Ops {
    concat: Expression<'static, 'static>,
    add: Expression<'static, 'static>,
    mul: Expression<'static, 'static>,
    eq: Expression<'static, 'static>,
    ne: Expression<'static, 'static>,
    lt: Expression<'static, 'static>,
    lte: Expression<'static, 'static>,
    gt: Expression<'static, 'static>,
    gte: Expression<'static, 'static>,
    contains: Expression<'static, 'static>,
    item: Expression<'static, 'static>,
    slice: Expression<'static, 'static>,
}

static PLAIN: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
});

static OPS: LazyLock<Ops> = LazyLock::new(|| {
    let op = |source: &'static str| {
        PLAIN
            .compile_expression(source)
            .unwrap_or_else(|e| panic!("the operator expression `{source}` compiles: {e}"))
    };
    Ops {
        concat: op("a ~ b"),
        add: op("a + b"),
        mul: op("a * b"),
        eq: op("a == b"),
        ne: op("a != b"),
        lt: op("a < b"),
        lte: op("a <= b"),
        gt: op("a > b"),
        gte: op("a >= b"),
        contains: op("a in b"),
        item: op("a[b]"),
        slice: op("a[b:c:d]"),
    }
});

/// Runs one of minijinja's operators on `args` (named `a`, `b`, `c`, `d`). Its errors
/// lose the operator expression's own location so that the template's is given.
fn apply(op: &Expression<'static, 'static>, args: &[Value]) -> Result<Value, Error> {
    let names = ["a", "b", "c", "d"];
    let context = Value::from_iter(names.iter().copied().zip(args.iter().cloned()));
    op.eval(context).map_err(|e| match e.detail() {
        Some(detail) => Error::new(e.kind(), detail.to_owned()),
        None => Error::from(e.kind()),
    })
}

fn two(args: &[Value]) -> Result<(&Value, &Value), Error> {
    match args {
        [a, b] => Ok((a, b)),
        _ => Err(Error::from(ErrorKind::InvalidOperation)),
    }
}

/// `a ~ b`: their lengths, charged.
fn concat(args: Rest<Value>) -> Result<Value, Error> {
    let (a, b) = two(&args)?;
    let bound = read_cost("`~`", a, b)?;
    ensure("`~`", bound)?;
    let out = apply(&OPS.concat, &args)?;
    charge("`~`", out.as_str().map_or(bound, |s| s.len() as u64))?;
    Ok(out)
}

/// Items a sequence holds, when it says.
fn items(value: &Value) -> Option<u64> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => value.len().map(|n| n as u64),
        _ => None,
    }
}

/// What `a + b` costs: strings and sequences what they join; numbers nothing.
fn add_cost(a: &Value, b: &Value) -> u64 {
    match (a.as_str(), b.as_str(), items(a), items(b)) {
        (Some(x), Some(y), _, _) => (x.len() + y.len()) as u64,
        (_, _, Some(x), Some(y)) => x.saturating_add(y).saturating_add(1).saturating_mul(ENTRY),
        _ => 0,
    }
}

/// `a + b`.
fn add(args: Rest<Value>) -> Result<Value, Error> {
    let (a, b) = two(&args)?;
    charge("`+`", add_cost(a, b))?;
    apply(&OPS.add, &args)
}

/// What `a * b` costs: a string or a list repeated `n` times `n` times its size, and
/// at least `n` (repeating an empty list `n` times still loops `n` times); numbers
/// nothing.
fn mul_cost(a: &Value, b: &Value) -> u64 {
    let (unit, times) = match (a.kind(), b.kind()) {
        (ValueKind::Number, ValueKind::Number) => return 0,
        (ValueKind::Number, _) => (b, a),
        _ => (a, b),
    };
    // A count past `i64` is a count past the budget (found by fuzzing: minijinja's own
    // `[4] * 20 * 16143140752487000403` multiplied with overflow while folding).
    let times = i128::try_from(times.clone())
        .unwrap_or(0)
        .clamp(0, i128::from(u64::MAX)) as u64;
    let size = match (unit.as_str(), items(unit)) {
        (Some(s), _) => s.len() as u64,
        (_, Some(n)) => n.saturating_mul(ENTRY),
        _ => 0,
    };
    size.max(1).saturating_mul(times)
}

/// `a * b`.
/// The list and the count of `a * b` when it repeats a list, in either order.
fn repeated_list<'v>(a: &'v Value, b: &'v Value) -> Option<(&'v Value, &'v Value)> {
    match (a.kind(), b.kind()) {
        (ValueKind::Seq | ValueKind::Iterable, ValueKind::Number) => Some((a, b)),
        (ValueKind::Number, ValueKind::Seq | ValueKind::Iterable) => Some((b, a)),
        _ => None,
    }
}

/// A list repeated is built here, not by minijinja: minijinja repeats lazily, so a
/// repeated empty list costs steps whenever it is read while holding no entry to
/// charge (found by fuzzing: `[] * 700 * 3070200 * 307` spun).
fn mul(args: Rest<Value>) -> Result<Value, Error> {
    let (a, b) = two(&args)?;
    charge("`*`", mul_cost(a, b))?;
    let Some((seq, times)) = repeated_list(a, b) else {
        return apply(&OPS.mul, &args);
    };
    let (Some(times), Ok(items)) = (times.as_usize(), seq.try_iter()) else {
        // A negative or fractional count, or what cannot be iterated: minijinja's error.
        return apply(&OPS.mul, &args);
    };
    let items: Vec<Value> = items.collect();
    let entries = (items.len() as u64).saturating_mul(times as u64);
    charge("`*`", entries.saturating_mul(ENTRY))?;
    let repeated: Vec<Value> = std::iter::repeat_n(items, times).flatten().collect();
    Ok(Value::from(repeated))
}

/// Refuses to fold `seq * n` (n > 1) where `seq` holds nothing: minijinja folds it into
/// a lazy repetition whose every reading takes `n` steps that yield nothing to charge.
fn refuse_empty_repetition(a: &Value, b: &Value) -> Result<(), Error> {
    let Some((seq, times)) = repeated_list(a, b) else {
        return Ok(());
    };
    let empty = seq
        .try_iter()
        .map_or(true, |mut items| items.next().is_none());
    if empty && times.as_usize().is_some_and(|n| n > 1) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "`*` on an empty list: the result is `[]`, write that",
        ));
    }
    Ok(())
}

/// What looking through `a` and `b` costs (comparisons, `in`, `~`).
fn read_cost(what: &str, a: &Value, b: &Value) -> Result<u64, Error> {
    Ok(walk(what, a)?.bytes.saturating_add(walk(what, b)?.bytes))
}

/// Comparisons, `in`: the work of looking through both sides, charged.
fn compare(what: &str, op: &Expression<'static, 'static>, args: &[Value]) -> Result<Value, Error> {
    let (a, b) = two(args)?;
    charge(what, read_cost(what, a, b)?)?;
    apply(op, args)
}

/// `a[b]`: a string is indexed by character, so its length is charged.
fn item(args: Rest<Value>) -> Result<Value, Error> {
    let (a, _) = two(&args)?;
    charge("`[…]`", a.as_str().map_or(0, str::len) as u64)?;
    apply(&OPS.item, &args)
}

/// `a[b:c:d]`: what is sliced, charged.
fn slice(args: Rest<Value>) -> Result<Value, Error> {
    let value = args.first().cloned().unwrap_or_default();
    let size = match (value.as_str(), items(&value)) {
        (Some(s), _) => s.len() as u64,
        (_, Some(n)) => n.saturating_mul(ENTRY),
        _ => 0,
    };
    charge("`[…:…]`", size)?;
    if let [value, start, stop, step] = &args[..] {
        if let Some(empty) = empty_backward_slice(value, start, stop, step)? {
            return Ok(empty);
        }
    }
    apply(&OPS.slice, &args)
}

/// minijinja 2.24 subtracts with overflow (a panic under debug assertions, found by
/// fuzzing: `machine.id[:4800:-5]`) on a backward slice whose stop lies past its
/// start, indexes an empty sequence or string when slicing it backwards (a panic in
/// any build, found by fuzzing: `[-2][-1:-2][-1:-1:-1]`), and negates a step of
/// `i64::MIN`; the first two are answered here as Python does, empty, and the last
/// refused.
fn empty_backward_slice(
    value: &Value,
    start: &Value,
    stop: &Value,
    step: &Value,
) -> Result<Option<Value>, Error> {
    let index = |v: &Value| {
        if v.is_none() {
            Some(None)
        } else {
            i64::try_from(v.clone()).ok().map(Some)
        }
    };
    let Some(Some(step)) = index(step) else {
        return Ok(None);
    };
    if step == i64::MIN {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "slice step out of range",
        ));
    }
    // A start or stop that is not an integer: minijinja's own error.
    let (true, Some(start), Some(stop)) = (step < 0, index(start), index(stop)) else {
        return Ok(None);
    };
    let (end, empty) = match value.kind() {
        ValueKind::String => (
            value.as_str().map_or(0, |s| s.chars().count()),
            Value::from(""),
        ),
        ValueKind::Bytes => (
            value.as_bytes().map_or(0, <[u8]>::len),
            Value::from_bytes(Vec::new()),
        ),
        ValueKind::Seq | ValueKind::Iterable => (
            value.try_iter().map_or(0, Iterator::count),
            Value::from(Vec::<Value>::new()),
        ),
        _ => return Ok(None),
    };
    if end == 0 {
        // minijinja indexes an empty sequence here (`[][::-1]` panics, in release too).
        return Ok(Some(empty));
    }
    let Some(stop) = stop else {
        return Ok(None);
    };
    let end = i64::try_from(end).unwrap_or(i64::MAX);
    let first = match start {
        None => end - 1,
        Some(s) if s >= end => end - 1,
        Some(s) if s >= 0 => s,
        Some(s) => end.saturating_add(s).max(0),
    }
    .max(0);
    let last = if stop < 0 {
        end.saturating_add(stop).max(0)
    } else {
        stop
    };
    Ok((last > first).then_some(empty))
}

/// The nodes of `values` each one level down, charged; fails past [`MAX_DEPTH`].
fn charge_nesting(what: &str, values: &[Value]) -> Result<(), Error> {
    let mut nodes = 1u64;
    for value in values {
        let size = walk(what, value)?;
        if size.depth + 1 > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what}: lists and maps nest at most {MAX_DEPTH} deep"),
            ));
        }
        nodes = nodes.saturating_add(size.nodes);
    }
    charge(what, nodes.saturating_mul(ENTRY))
}

/// `[a, b, …]`.
fn list(args: Rest<Value>) -> Result<Value, Error> {
    charge_nesting("a list", &args)?;
    Ok(Value::from(args.0))
}

/// `{k: v, …}`.
fn map(args: Rest<Value>) -> Result<Value, Error> {
    charge_nesting("a map", &args)?;
    let mut pairs = args.0.into_iter();
    let mut entries = Vec::new();
    while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
        entries.push((key, value));
    }
    Ok(Value::from_iter(entries))
}

/// What a filter may add beyond six times its arguments' size.
fn amplification(name: &str, args: &[Value]) -> Result<u64, Error> {
    let arg = |i: usize| args.get(i).filter(|v| !v.is_kwargs());
    let kwarg = |key: &str| {
        args.last()
            .filter(|v| v.is_kwargs())
            .and_then(|v| Kwargs::try_from(v.clone()).ok())
            .and_then(|k| k.peek::<Value>(key).ok())
    };
    let number =
        |v: Option<Value>| v.and_then(|v| i64::try_from(v).ok()).unwrap_or(0).max(0) as u64;
    let text = |i: usize| arg(i).and_then(Value::as_str).unwrap_or("");
    Ok(match name {
        "replace" => {
            let (s, old, new) = (text(0), text(1), text(2));
            let times = if old.is_empty() {
                s.chars().count() as u64 + 1
            } else {
                s.matches(old).count() as u64
            };
            times.saturating_mul(new.len() as u64)
        }
        "indent" => (text(0).matches('\n').count() as u64 + 1) * MAX_INDENT as u64,
        "join" => {
            let sep = arg(1).cloned().or_else(|| kwarg("d")).unwrap_or_default();
            let sep = sep.as_str().map_or(0, str::len) as u64;
            let n = arg(0).and_then(items).unwrap_or(0);
            n.saturating_mul(sep)
        }
        "batch" | "slice" => {
            let n = number(arg(1).cloned());
            let fill = arg(2).cloned().or_else(|| kwarg("fill_with"));
            let fill = match fill {
                Some(fill) => walk(name, &fill)?.bytes,
                None => 0,
            };
            n.saturating_mul(ENTRY.saturating_add(fill))
        }
        "format" => {
            if !printf_keys_are_ascii(text(0)) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "format: a `%(key)` may hold only ASCII characters",
                ));
            }
            // Widths and precisions (`%999999d`), and `*` ones taken from the arguments.
            let widths = text(0)
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| {
                    d.parse::<u64>()
                        .ok()
                        .or((!d.is_empty()).then_some(u64::MAX))
                })
                .fold(0u64, u64::saturating_add);
            let numbers = args
                .iter()
                .skip(1)
                .map(|v| number(Some(v.clone())))
                .fold(0u64, u64::saturating_add);
            widths.saturating_add(numbers)
        }
        "tojson" => {
            let indent = number(arg(1).cloned().or_else(|| kwarg("indent")));
            if indent > MAX_JSON_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson indent is at most {MAX_JSON_INDENT}"),
                ));
            }
            let size = match arg(0) {
                Some(v) => walk(name, v)?,
                None => Size::default(),
            };
            size.nodes
                .saturating_mul(size.depth as u64 + 1)
                .saturating_mul(indent + 1)
        }
        _ => 0,
    })
}

/// Whether every `%(key)` of a printf-style format string is ASCII. minijinja 2.24
/// reads such a key one byte at a time and slices the string at each byte, so a
/// non-ASCII character in it panics (in any build). `%%` is a literal `%`, as there.
fn printf_keys_are_ascii(format: &str) -> bool {
    let bytes = format.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'%') => i += 2,
            Some(b'(') => {
                let key = &bytes[i + 2..];
                let end = key.iter().position(|&b| b == b')').unwrap_or(key.len());
                if !key[..end].is_ascii() {
                    return false;
                }
                i += 2 + end;
            }
            _ => i += 1,
        }
    }
    true
}

/// How many times its arguments' size a filter can write at most, before what
/// [`amplification`] adds: six for escaping (`\u0000`, `&quot;`), three for case
/// mapping (one byte can become three), one for the rest (they pick, count, order, trim
/// or split what they are given; `map` calls filters that check themselves).
fn factor(name: &str) -> u64 {
    match name {
        "tojson" | "string" | "escape" | "e" => 6,
        "upper" | "lower" | "title" | "capitalize" => 3,
        _ => 1,
    }
}

/// Wraps a builtin filter: bounds its output before it runs; charges the entries it
/// reads and what it built after.
fn add_filter(env: &mut Environment<'static>, name: &'static str, builtin: Value) {
    env.add_filter(name, move |state: &State, args: Rest<Value>| {
        let mut input = Size::default();
        for arg in args.iter() {
            let size = walk(name, arg)?;
            input.bytes = input.bytes.saturating_add(size.bytes);
            input.nodes = input.nodes.saturating_add(size.nodes);
        }
        let bound = input
            .bytes
            .saturating_mul(factor(name))
            .saturating_add(amplification(name, &args)?);
        ensure(name, bound)?;
        charge(name, input.nodes.saturating_mul(ENTRY))?;
        let out = builtin.call(state, &args)?;
        let size = walk(name, &out)?;
        charge(name, size.bytes)?;
        Ok::<Value, Error>(out)
    });
}

/// Wraps a builtin test: the work of reading its arguments, charged.
fn add_test(env: &mut Environment<'static>, name: &'static str, builtin: Value) {
    env.add_test(name, move |state: &State, args: Rest<Value>| {
        for arg in args.iter() {
            let size = walk(name, arg)?;
            charge(name, size.bytes)?;
        }
        Ok::<bool, Error>(builtin.call(state, &args)?.is_true())
    });
}

/// minijinja's `indent`, refusing a width over [`MAX_INDENT`].
fn bounded_indent(
    value: minijinja::value::StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let asked = match width {
        Some(w) => Some(w),
        None => kwargs.peek::<Option<usize>>("width")?,
    };
    if asked.is_some_and(|w| w > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("indent width is at most {MAX_INDENT}"),
        ));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// The environment a render runs in: strict, no escaping, `fuel`, minijinja's filters,
/// tests and functions each behind the budget (`pprint`, `debug` and `namespace` left
/// out: the first two write out indented dumps, the last holds values a template can
/// make refer to themselves), and the rewritten instructions' functions.
fn environment(fuel: u64) -> Environment<'static> {
    use minijinja::{filters as f, functions, tests as t};
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(fuel));
    env.set_formatter(|out, state, value| {
        let size = walk("output", value)?;
        charge("output", size.bytes)?;
        minijinja::escape_formatter(out, state, value)
    });
    let filters: [(&'static str, Value); 47] = [
        ("safe", Value::from_function(f::safe)),
        ("escape", Value::from_function(f::escape)),
        ("e", Value::from_function(f::escape)),
        ("lower", Value::from_function(f::lower)),
        ("upper", Value::from_function(f::upper)),
        ("title", Value::from_function(f::title)),
        ("capitalize", Value::from_function(f::capitalize)),
        ("replace", Value::from_function(f::replace)),
        ("length", Value::from_function(f::length)),
        ("count", Value::from_function(f::length)),
        ("dictsort", Value::from_function(f::dictsort)),
        ("items", Value::from_function(f::items)),
        ("reverse", Value::from_function(f::reverse)),
        ("trim", Value::from_function(f::trim)),
        ("join", Value::from_function(f::join)),
        ("split", Value::from_function(f::split)),
        ("lines", Value::from_function(f::lines)),
        ("default", Value::from_function(f::default)),
        ("d", Value::from_function(f::default)),
        ("round", Value::from_function(f::round)),
        ("abs", Value::from_function(f::abs)),
        ("int", Value::from_function(f::int)),
        ("float", Value::from_function(f::float)),
        ("attr", Value::from_function(f::attr)),
        ("first", Value::from_function(f::first)),
        ("last", Value::from_function(f::last)),
        ("min", Value::from_function(f::min)),
        ("max", Value::from_function(f::max)),
        ("sort", Value::from_function(f::sort)),
        ("list", Value::from_function(f::list)),
        ("string", Value::from_function(f::string)),
        ("bool", Value::from_function(f::bool)),
        ("batch", Value::from_function(f::batch)),
        ("slice", Value::from_function(f::slice)),
        ("sum", Value::from_function(f::sum)),
        ("indent", Value::from_function(bounded_indent)),
        ("select", Value::from_function(f::select)),
        ("reject", Value::from_function(f::reject)),
        ("selectattr", Value::from_function(f::selectattr)),
        ("rejectattr", Value::from_function(f::rejectattr)),
        ("map", Value::from_function(f::map)),
        ("groupby", Value::from_function(f::groupby)),
        ("unique", Value::from_function(f::unique)),
        ("chain", Value::from_function(f::chain)),
        ("zip", Value::from_function(f::zip)),
        ("format", Value::from_function(f::format)),
        ("tojson", Value::from_function(f::tojson)),
    ];
    for (name, builtin) in filters {
        add_filter(&mut env, name, builtin);
    }
    let tests: [(&'static str, Value); 42] = [
        ("undefined", Value::from_function(t::is_undefined)),
        ("defined", Value::from_function(t::is_defined)),
        ("none", Value::from_function(t::is_none)),
        ("safe", Value::from_function(t::is_safe)),
        ("escaped", Value::from_function(t::is_safe)),
        ("boolean", Value::from_function(t::is_boolean)),
        ("odd", Value::from_function(t::is_odd)),
        ("even", Value::from_function(t::is_even)),
        ("divisibleby", Value::from_function(t::is_divisibleby)),
        ("number", Value::from_function(t::is_number)),
        ("integer", Value::from_function(t::is_integer)),
        ("int", Value::from_function(t::is_integer)),
        ("float", Value::from_function(t::is_float)),
        ("string", Value::from_function(t::is_string)),
        ("sequence", Value::from_function(t::is_sequence)),
        ("iterable", Value::from_function(t::is_iterable)),
        ("mapping", Value::from_function(t::is_mapping)),
        ("startingwith", Value::from_function(t::is_startingwith)),
        ("endingwith", Value::from_function(t::is_endingwith)),
        ("lower", Value::from_function(t::is_lower)),
        ("upper", Value::from_function(t::is_upper)),
        ("sameas", Value::from_function(t::is_sameas)),
        ("eq", Value::from_function(t::is_eq)),
        ("equalto", Value::from_function(t::is_eq)),
        ("==", Value::from_function(t::is_eq)),
        ("ne", Value::from_function(t::is_ne)),
        ("!=", Value::from_function(t::is_ne)),
        ("lt", Value::from_function(t::is_lt)),
        ("lessthan", Value::from_function(t::is_lt)),
        ("<", Value::from_function(t::is_lt)),
        ("le", Value::from_function(t::is_le)),
        ("<=", Value::from_function(t::is_le)),
        ("gt", Value::from_function(t::is_gt)),
        ("greaterthan", Value::from_function(t::is_gt)),
        (">", Value::from_function(t::is_gt)),
        ("ge", Value::from_function(t::is_ge)),
        (">=", Value::from_function(t::is_ge)),
        ("in", Value::from_function(t::is_in)),
        ("true", Value::from_function(t::is_true)),
        ("false", Value::from_function(t::is_false)),
        ("filter", Value::from_function(t::is_filter)),
        ("test", Value::from_function(t::is_test)),
    ];
    for (name, builtin) in tests {
        add_test(&mut env, name, builtin);
    }
    // At most 100,000 items, lazily: iterating costs fuel, materializing is charged
    // by the filter that does it.
    env.add_function("range", functions::range);
    let dict = Value::from_function(functions::dict);
    env.add_function("dict", move |state: &State, args: Rest<Value>| {
        charge_nesting("dict", &args)?;
        dict.call(state, &args)
    });
    env.add_function(CONCAT, concat);
    env.add_function(ADD, add);
    env.add_function(MUL, mul);
    env.add_function(EQ, |a: Rest<Value>| compare("`==`", &OPS.eq, &a));
    env.add_function(NE, |a: Rest<Value>| compare("`!=`", &OPS.ne, &a));
    env.add_function(LT, |a: Rest<Value>| compare("`<`", &OPS.lt, &a));
    env.add_function(LTE, |a: Rest<Value>| compare("`<=`", &OPS.lte, &a));
    env.add_function(GT, |a: Rest<Value>| compare("`>`", &OPS.gt, &a));
    env.add_function(GTE, |a: Rest<Value>| compare("`>=`", &OPS.gte, &a));
    env.add_function(IN, |a: Rest<Value>| compare("`in`", &OPS.contains, &a));
    env.add_function(ITEM, item);
    env.add_function(SLICE, slice);
    env.add_function(LIST, list);
    env.add_function(MAP, map);
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn run(source: &str) -> Result<String, Error> {
        let facts = context! { s => "a\"b\\c", n => 3, disks => vec!["sda", "sdb"] };
        render("t", source, facts, super::super::FUEL).map_err(|f| f.error)
    }

    fn refused(source: &str, why: &str) {
        match run(source) {
            Ok(out) => panic!("rendered {} bytes of {source:.200?}", out.len()),
            Err(e) => {
                let text = format!("{e:#}");
                assert!(text.contains(why), "{source:?}: {text}");
            }
        }
    }

    /// The same templates through minijinja untouched and through the budget give the
    /// same text.
    #[test]
    fn rewritten_instructions_render_as_minijinja_does() {
        let mut plain = Environment::new();
        plain.set_undefined_behavior(UndefinedBehavior::Strict);
        plain.set_keep_trailing_newline(true);
        plain.set_trim_blocks(true);
        plain.set_lstrip_blocks(true);
        let facts = context! { s => "a\"b\\c", n => 3, disks => vec!["sda", "sdb"] };
        for source in [
            "{{ 1 + 2 }} {{ 1.5 + 1 }} {{ 'a' ~ 1 ~ none }} {{ 'a' + 'b' }} {{ [1, 2] + [3] }}",
            "{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ 2 * 3 }} {{ [1] * 3 }} {{ 7 // 2 }} {{ 7 % 4 }}",
            "{{ s[1:] }} {{ s[::-1] }} {{ s[1] }} {{ disks[-1] }} {{ disks[:1] }} {{ s[:] }}",
            "{{ {'a': 1, 'b': [2]}['b'] }} {{ {'a': 1}.a }} {{ {'x': 1, 'y': 2} }}",
            "{{ 'b' in s }} {{ 'sdc' in disks }} {{ 'x' not in s }} {{ 1 in [1] }}",
            "{{ 1 < 2 }} {{ 'a' >= 'b' }} {{ n == 3 }} {{ n != 3 }} {{ [1] == [1] }} {{ 2 <= 1 }}",
            "{{ [1, [2, 's']] | tojson }} {{ s | tojson }} {{ {'k': n} | tojson(indent=2) }}",
            "{% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}={{ v }};{% endfor %}",
            "{{ '%03d-%s' | format(7, s) }} {{ 'a b c' | split | join('-') }} {{ range(3) | list }}",
            "{{ dict(a=1, b=[2]) }} {% macro m(x) %}[{{ x ~ '!' }}]{% endmacro %}{{ m(1) }}",
            "{{ 'x\ny' | indent(2) }} {{ [3, 1, 2] | sort }} {{ disks | map('upper') | join }}",
            "{{ disks | select('startingwith', 'sd') | list }} {{ s | replace('b', 'BB') }}",
            "{{ range(10) | batch(3, 0) | list }} {{ range(5) | slice(2) | list }}",
            "{% set x %}{{ s }}{{ n }}{% endset %}{{ x }} {{ disks | length }} {{ n is odd }}",
            "{% for d in disks if d != 'sda' %}{{ loop.index }}{{ d }}{% else %}none{% endfor %}",
            "{{ 'yes' if n > 2 else 'no' }} {{ s if false }}|{{ (disks + ['sdc'])[2] }}",
            "{% set l = [] %}{% for d in disks %}{% set l = l + [d] %}{% endfor %}{{ l }}",
            "{{ disks | first }} {{ disks | last | capitalize }} {{ -n }} {{ n ** 2 }} {{ 7 / 2 }}",
        ] {
            let want = plain.render_str(source, &facts);
            let got = run(source);
            assert_eq!(
                got.as_ref().map_err(ToString::to_string),
                want.as_ref().map_err(ToString::to_string),
                "{source}"
            );
        }
    }

    #[test]
    fn doubling_strings_runs_out_of_budget() {
        let chain = "{% set a = 'xy' %}".to_owned() + &"{% set a = a ~ a %}".repeat(40);
        refused(&chain, "budget");
        refused(
            "{% macro d(x, n) %}{{ d(x + x, n - 1) if n else x }}{% endmacro %}{{ d('ab', 60) }}",
            "budget",
        );
        let blocks =
            "{% set a = 'xy' %}".to_owned() + &"{% set a %}{{ a }}{{ a }}{% endset %}".repeat(40);
        refused(&blocks, "budget");
        refused("{{ 'ab' * 99999999999 }}", "budget");
        refused("{{ [] * 30702000600001 }}", "empty list");
        refused("{% set e = [] %}{{ e * 30702000600001 }}", "budget");
    }

    #[test]
    fn filters_that_multiply_run_out_of_budget() {
        // Found by tests/fuzz (template_render): a `tojson` chain grew to 4.7 GB.
        let chain = "{{ s".to_owned() + &" | tojson".repeat(40) + " }}";
        refused(&chain, "budget");
        let replace = "{{ s".to_owned() + &" | replace('', s * 64)".repeat(8) + " }}";
        refused(&replace, "budget");
        refused("{{ '%999999999999d' | format(1) }}", "budget");
        refused("{{ '%*d' | format(999999999999, 1) }}", "budget");
        refused("{{ [1] | batch(999999999999, 'x') | list }}", "budget");
        refused("{{ range(9) | slice(999999999999, 'x') | list }}", "budget");
        refused("{{ range(99999) | join(s * 999) }}", "budget");
        refused("{{ {'a': 1} | tojson(indent=99999) }}", "indent is at most");
    }

    #[test]
    fn shared_lists_cannot_grow_by_sharing() {
        // Each level holds the one before eight times: 8^9 strings to write out.
        let mut source = "{% set l0 = [s, s, s, s, s, s, s, s] %}".to_owned();
        for i in 1..10 {
            let p = i - 1;
            source +=
                &format!("{{% set l{i} = [l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}] %}}");
        }
        refused(&(source.clone() + "{{ l9 | tojson }}"), "budget");
        refused(&(source.clone() + "{{ l9 == l9 }}"), "budget");
        refused(&(source + "{{ l9 ~ '' }}"), "budget");
        refused(
            "{% macro f(l, n) %}{{ f([l], n - 1) if n else l }}{% endmacro %}{{ f([], 99) }}",
            "nest at most 32",
        );
        refused(
            "{% macro f(d, n) %}{{ f(dict(a=d), n - 1) if n else d }}{% endmacro %}{{ f({}, 99) }}",
            "nest at most 32",
        );
    }

    #[test]
    fn long_text_in_a_loop_lowers_the_fuel() {
        let body = "x".repeat(64 * 1024);
        let source = format!(
            "{{% for i in range(99999) %}}{{% for j in range(99999) %}}{body}{{% endfor %}}{{% endfor %}}"
        );
        let err = run(&source).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfFuel, "{err:#}");
        // The same text once, outside a loop, costs its one instruction.
        assert_eq!(run(&body).map(|s| s.len()).ok(), Some(body.len()));
    }

    #[test]
    fn what_the_rewrite_refuses_is_named() {
        refused("{{ 1 < n < 5 }}", "chained comparisons");
        let failure = render("t", "a\n{{ 1 < n < 5 }}", Value::UNDEFINED, 1000).unwrap_err();
        assert_eq!(failure.line(), Some(2), "{failure:?}");
        refused("{{ __substruct_list(1) }}", "are reserved");
        refused("{{ pprint }}", "undefined");
        let err = run("a\nb\n{{ 1 + 'x' }}").unwrap_err();
        assert_eq!(err.line(), Some(3), "{err:#}");
        let err = run("{{ nope ~ 'x' }}").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UndefinedError, "{err:#}");
    }

    #[test]
    fn repeated_lists_are_built_and_charged() {
        // Found by tests/fuzz (template_render): lazy repetitions of an empty list spun.
        refused("{{-[] * 700* 3070200* 307}}", "empty list");
        refused("{% set e = [] %}{{ (e * 99999999) * 99999999 }}", "budget");
        let out = run("{% set e = [] %}{{ e * 99999 }}|{{ [1, 2] * 2 }}|{{ 2 * [n] }}");
        assert_eq!(out.unwrap(), "[]|[1, 2, 1, 2]|[3, 3]");
        assert_eq!(run("{{ [] * 1 }}{{ [1] * 0 }}").unwrap(), "[][]");
        refused("{{ [1] * 9999999 }}", "budget");
        refused("{{-[4] * 000020*1614314075248__7000403}}", "budget");
        refused("{% set l = [4] %}{{ l * 16143140752487000403 }}", "budget");
    }

    #[test]
    fn backward_slices_past_their_start_are_empty() {
        // Found by tests/fuzz (template_render): minijinja subtracted with overflow.
        assert_eq!(run("[{{ s[:4800:-5] }}]").unwrap(), "[]");
        assert_eq!(
            run("{{ disks[:7:-1] }}|{{ disks[5:9:-2] }}").unwrap(),
            "[]|[]"
        );
        assert_eq!(
            run("{{ 'abcdef'[4:1:-1] }} {{ 'abc'[::-1] }}").unwrap(),
            "edc cba"
        );
        refused("{{ s[::-9223372036854775807 - 1] }}", "step out of range");
        // Found by tests/fuzz (template_render): minijinja indexed an empty sequence.
        let empty = "{{ [-2][-1:-2][-1:-1:-1] }}|{{ [][::-1] }}|{{ ''[::-2] }}|{{ s[1:1][::-1] }}";
        assert_eq!(run(empty).unwrap(), "[]|[]||");
        assert_eq!(
            run("{{ [1, 2, 3][::-1] }}|{{ s[::-1] }}").unwrap(),
            "[3, 2, 1]|c\\b\"a"
        );
    }

    #[test]
    fn printf_keys_must_be_ascii() {
        // Found by tests/fuzz (template_render): minijinja sliced a `%(key)` inside a
        // character and panicked.
        refused("{{ '%(\u{492a} d)s' | format(n) }}", "ASCII");
        refused("{{ 'a %%%(k\u{e9})s' | format(n) }}", "ASCII");
        assert!(printf_keys_are_ascii("%%(\u{e9}) %s %(key)s \u{e9}"));
        assert!(!printf_keys_are_ascii("%(\u{e9}"));
        assert_eq!(
            run("{{ '%%(\u{e9}) %s \u{e9}' | format(n) }}").unwrap(),
            "%(\u{e9}) 3 \u{e9}"
        );
    }

    #[test]
    fn every_render_has_a_whole_budget() {
        // 6 MiB out of 16: twice in a row is fine, each render starting afresh.
        let big = "{% set a = 'x' * (6 * 1024 * 1024) %}{{ a | length }}";
        assert_eq!(run(big).unwrap(), "6291456");
        assert_eq!(run(big).unwrap(), "6291456");
    }
}
