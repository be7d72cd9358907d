//! `aclshm-sys-gen`: keeps `aclshm-sys` in step with its C declarations and with the official ACL headers.
//!
//! ```text
//! aclshm-sys-gen generate                  rewrite ffi/src/generated.rs and ffi/abi/abi_check.cpp
//! aclshm-sys-gen check                     fail if regenerating would change those files
//! aclshm-sys-gen abi-check --official DIR  compile the ABI check against the official headers in DIR
//!                                          (DIR holds acl/acl_rt.h), after proving the check rejects
//!                                          a wrong value, a wrong layout and a wrong prototype
//! ```
//!
//! Everything is derived from `ffi/include/aclshm_acl.h` and `ffi/include/aclshm_sim.h` through bindgen
//! (libclang must be installed). The generated Rust file holds the types and constants, the `for_each_fn!`
//! macro listing every entry point (from which `aclshm-sys` builds its function table and the simulator its
//! exports), and the table of error-code names. The generated C++ file restates every
//! constant, enum value and struct layout of our declarations as `static_assert`s and re-declares our
//! typedefs and prototypes after the official headers, so a C++ compiler rejects any difference.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bindgen::callbacks::{IntKind, ParseCallbacks};
use quote::ToTokens;

type Result<T> = std::result::Result<T, String>;

const GENERATED_RS: &str = "src/generated.rs";
const ABI_CHECK_CPP: &str = "abi/abi_check.cpp";
const ACL_HEADER: &str = "include/aclshm_acl.h";
const SIM_HEADER: &str = "include/aclshm_sim.h";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aclshm-sys-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: aclshm-sys-gen generate | check | abi-check --official DIR [--cxx COMPILER]".to_string()
}

fn run(args: &[String]) -> Result<()> {
    let ffi = ffi_dir();
    match args.first().map(String::as_str) {
        Some("generate") => {
            let out = generate(&ffi)?;
            write_if_changed(&ffi.join(GENERATED_RS), &out.rust)?;
            write_if_changed(&ffi.join(ABI_CHECK_CPP), &out.cpp)?;
            Ok(())
        }
        Some("check") => {
            let out = generate(&ffi)?;
            let mut stale = Vec::new();
            for (rel, text) in [(GENERATED_RS, &out.rust), (ABI_CHECK_CPP, &out.cpp)] {
                let on_disk = fs::read_to_string(ffi.join(rel)).unwrap_or_default();
                if &on_disk != text {
                    stale.push(format!("ffi/{rel}"));
                }
            }
            if stale.is_empty() {
                println!("aclshm-sys-gen: generated files are up to date");
                Ok(())
            } else {
                Err(format!(
                    "{} out of date with ffi/include; run `cargo run -p aclshm-sys-gen -- generate` and commit",
                    stale.join(" and ")
                ))
            }
        }
        Some("abi-check") => {
            let mut official = None;
            let mut cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--official" => official = it.next().map(PathBuf::from),
                    "--cxx" => cxx = it.next().cloned().ok_or_else(usage)?,
                    _ => return Err(usage()),
                }
            }
            let official = official.ok_or_else(usage)?;
            abi_check(&ffi, &official, &cxx)
        }
        _ => Err(usage()),
    }
}

fn ffi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ffi/gen has a parent").to_path_buf()
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("aclshm-sys-gen: wrote {}", path.display());
    Ok(())
}

/// bindgen callbacks: give each integer macro the Rust type its C spelling implies.
#[derive(Debug)]
struct MacroTypes;

impl ParseCallbacks for MacroTypes {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        if name.starts_with("ACL_ERROR") || name == "ACL_RT_SUCCESS" {
            Some(IntKind::Custom { name: "aclError", is_signed: true })
        } else if name.contains("_FLAG_") {
            // Spelt with a UL suffix and passed as uint64_t flags.
            Some(IntKind::U64)
        } else {
            Some(IntKind::U32)
        }
    }
}

/// bindgen over `headers` (names under ffi/include), configured as aclshm-sys expects.
fn bindgen_builder(ffi: &Path, headers: &[&str]) -> bindgen::Builder {
    let include = ffi.join("include");
    let wrapper: String = headers.iter().map(|h| format!("#include \"{h}\"\n")).collect();
    bindgen::Builder::default()
        .header_contents("aclshm_wrapper.h", &wrapper)
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_file(r".*aclshm_(acl|sim)\.h")
        .use_core()
        .ctypes_prefix("::core::ffi")
        .default_enum_style(bindgen::EnumVariation::NewType { is_bitfield: false, is_global: false })
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .derive_eq(true)
        .derive_hash(true)
        .layout_tests(true)
        .generate_comments(true)
        .merge_extern_blocks(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .parse_callbacks(Box::new(MacroTypes))
}

struct Generated {
    rust: String,
    cpp: String,
}

/// One entry point, as the `for_each_fn!` macro lists it.
struct FnDecl {
    name: String,
    docs: Vec<String>,
    args: Vec<(String, String)>,
    ret: String,
}

/// What the C++ ABI check restates about our declarations.
#[derive(Default)]
struct Facts {
    /// Integer constants (macros, `static const`, enum values) by name.
    values: BTreeMap<String, i128>,
    /// Enum type names.
    enums: Vec<String>,
    /// Struct name -> field (name, C type).
    structs: BTreeMap<String, Vec<(String, String)>>,
    /// Struct name -> (size, align, field offsets).
    layouts: BTreeMap<String, Layout>,
}

#[derive(Default)]
struct Layout {
    size: Option<u64>,
    align: Option<u64>,
    offsets: BTreeMap<String, u64>,
}

fn generate(ffi: &Path) -> Result<Generated> {
    for h in [ACL_HEADER, SIM_HEADER] {
        if !ffi.join(h).exists() {
            return Err(format!("missing {}", ffi.join(h).display()));
        }
    }
    let both = ["aclshm_acl.h", "aclshm_sim.h"];
    let types = bindgen_builder(ffi, &both)
        .blocklist_function(".*")
        .generate()
        .map_err(|e| format!("bindgen (types): {e}"))?
        .to_string();
    let fns = bindgen_builder(ffi, &both).generate().map_err(|e| format!("bindgen (functions): {e}"))?.to_string();

    let types_file = syn::parse_file(&types).map_err(|e| format!("parse bindgen output: {e}"))?;
    let local: HashSet<String> = types_file
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Struct(s) => Some(s.ident.to_string()),
            syn::Item::Type(t) => Some(t.ident.to_string()),
            _ => None,
        })
        .collect();
    let error_facts = collect_facts(&types_file)?;
    // The ABI check covers the ACL declarations only: the simulator's extensions have no official twin.
    let acl_only = bindgen_builder(ffi, &["aclshm_acl.h"])
        .blocklist_function(".*")
        .generate()
        .map_err(|e| format!("bindgen (ACL types): {e}"))?
        .to_string();
    let facts = collect_facts(&syn::parse_file(&acl_only).map_err(|e| format!("parse bindgen output: {e}"))?)?;

    let fns_file = syn::parse_file(&fns).map_err(|e| format!("parse bindgen output: {e}"))?;
    let mut acl_fns = Vec::new();
    let mut sim_fns = Vec::new();
    for item in &fns_file.items {
        let syn::Item::ForeignMod(block) = item else {
            continue;
        };
        for f in &block.items {
            let syn::ForeignItem::Fn(f) = f else { continue };
            let decl = fn_decl(f, &local)?;
            if decl.name.starts_with("aclshmSim") {
                sim_fns.push(decl);
            } else {
                acl_fns.push(decl);
            }
        }
    }
    if acl_fns.is_empty() || sim_fns.is_empty() {
        return Err("bindgen found no function declarations".to_string());
    }

    let mut rust = String::new();
    rust.push_str(
        "// @generated by aclshm-sys-gen from ffi/include/aclshm_acl.h and ffi/include/aclshm_sim.h.\n\
         // Do not edit: change the headers and run `cargo run -p aclshm-sys-gen -- generate`.\n\n",
    );
    rust.push_str(&types);
    rust.push('\n');
    rust.push_str(&fn_macro(&acl_fns, &sim_fns));
    rust.push('\n');
    rust.push_str(&error_table(&error_facts)?);

    let cpp = abi_cpp(&facts, &acl_fns);
    Ok(Generated { rust, cpp })
}

fn lit_int(expr: &syn::Expr) -> Option<i128> {
    match expr {
        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => i.base10_parse::<i128>().ok(),
        syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr, .. }) => lit_int(expr).map(|v| -v),
        syn::Expr::Call(call) if call.args.len() == 1 => lit_int(&call.args[0]),
        syn::Expr::Paren(p) => lit_int(&p.expr),
        _ => None,
    }
}

fn collect_facts(file: &syn::File) -> Result<Facts> {
    let mut facts = Facts::default();
    let mut newtypes = HashSet::new();
    for item in &file.items {
        match item {
            syn::Item::Const(c) => {
                let name = c.ident.to_string();
                if name == "_" {
                    continue;
                }
                let v = lit_int(&c.expr).ok_or_else(|| format!("constant {name} is not an integer literal"))?;
                facts.values.insert(name, v);
            }
            syn::Item::Struct(s) => {
                let name = s.ident.to_string();
                let transparent = s
                    .attrs
                    .iter()
                    .any(|a| a.path().is_ident("repr") && a.to_token_stream().to_string().contains("transparent"));
                if transparent {
                    newtypes.insert(name.clone());
                    facts.enums.push(name);
                    continue;
                }
                let mut fields = Vec::new();
                for f in &s.fields {
                    let fname = c_field_name(&f.ident.as_ref().ok_or("tuple struct in bindings")?.to_string());
                    fields.push((fname, c_type(&f.ty)?));
                }
                facts.structs.insert(name, fields);
            }
            syn::Item::Impl(imp) => {
                for it in &imp.items {
                    if let syn::ImplItem::Const(c) = it {
                        let v = lit_int(&c.expr)
                            .ok_or_else(|| format!("enum value {} is not an integer literal", c.ident))?;
                        facts.values.insert(c.ident.to_string(), v);
                    }
                }
            }
            _ => {}
        }
    }
    // bindgen's layout tests carry clang's numbers, as statements `["Size of T"][size_of::<T>() - 32usize];`
    // inside `const _: () = { .. };` items.
    for item in &file.items {
        let syn::Item::Const(c) = item else { continue };
        let syn::Expr::Block(block) = &*c.expr else { continue };
        for stmt in &block.block.stmts {
            let syn::Stmt::Expr(syn::Expr::Index(ix), _) = stmt else {
                continue;
            };
            let syn::Expr::Array(arr) = &*ix.expr else { continue };
            let Some(syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(label), .. })) = arr.elems.first() else {
                continue;
            };
            let syn::Expr::Binary(bin) = &*ix.index else { continue };
            let Some(num) = lit_int(&bin.right).and_then(|n| u64::try_from(n).ok()) else {
                continue;
            };
            let label = label.value();
            if let Some(t) = label.strip_prefix("Size of ") {
                facts.layouts.entry(t.to_string()).or_default().size = Some(num);
            } else if let Some(t) = label.strip_prefix("Alignment of ") {
                facts.layouts.entry(t.to_string()).or_default().align = Some(num);
            } else if let Some(f) = label.strip_prefix("Offset of field: ") {
                let (t, field) = f.split_once("::").ok_or_else(|| format!("odd layout label {label}"))?;
                facts.layouts.entry(t.to_string()).or_default().offsets.insert(c_field_name(field), num);
            }
        }
    }
    for name in facts.structs.keys() {
        let l = facts.layouts.get(name).ok_or_else(|| format!("no layout test for struct {name}"))?;
        if l.size.is_none() || l.align.is_none() {
            return Err(format!("incomplete layout test for struct {name}"));
        }
    }
    Ok(facts)
}

/// The C name of a field: bindgen appends `_` to names that are Rust keywords (`type` becomes `type_`).
fn c_field_name(rust: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "box", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "fn", "for", "if", "impl",
        "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "static", "struct",
        "super", "trait", "type", "unsafe", "use", "where", "while",
    ];
    match rust.strip_suffix('_') {
        Some(base) if KEYWORDS.contains(&base) => base.to_string(),
        _ => rust.to_string(),
    }
}

/// The C spelling of a field type from the bindings.
fn c_type(ty: &syn::Type) -> Result<String> {
    match ty {
        syn::Type::Path(p) => {
            let last = p.path.segments.last().ok_or("empty path")?.ident.to_string();
            Ok(match last.as_str() {
                "u8" => "uint8_t".into(),
                "u16" => "uint16_t".into(),
                "u32" => "uint32_t".into(),
                "u64" => "uint64_t".into(),
                "i8" => "int8_t".into(),
                "i16" => "int16_t".into(),
                "i32" => "int32_t".into(),
                "i64" => "int64_t".into(),
                "usize" => "size_t".into(),
                "c_char" => "char".into(),
                "c_int" => "int".into(),
                "c_uint" => "unsigned int".into(),
                other => other.to_string(),
            })
        }
        syn::Type::Array(a) => {
            let len = match &a.len {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => i.base10_digits().to_string(),
                other => return Err(format!("array length {} is not a literal", other.to_token_stream())),
            };
            Ok(format!("{}[{len}]", c_type(&a.elem)?))
        }
        syn::Type::Ptr(p) => {
            let inner = c_type(&p.elem)?;
            let inner = if inner == "c_void" { "void".to_string() } else { inner };
            Ok(if p.mutability.is_some() { format!("{inner} *") } else { format!("const {inner} *") })
        }
        other => Err(format!("field type {} has no C spelling here", other.to_token_stream())),
    }
}

fn fn_decl(f: &syn::ForeignItemFn, local: &HashSet<String>) -> Result<FnDecl> {
    let name = f.sig.ident.to_string();
    let docs = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| a.meta.require_name_value().ok())
        .map(|nv| format!("#[doc = {}]", nv.value.to_token_stream()))
        .collect();
    let mut args = Vec::new();
    for input in &f.sig.inputs {
        let syn::FnArg::Typed(pt) = input else {
            return Err(format!("{name}: receiver in a C prototype"));
        };
        let arg = snake_case(&pt.pat.to_token_stream().to_string());
        args.push((arg, rust_type(&pt.ty, local)?));
    }
    let ret = match &f.sig.output {
        syn::ReturnType::Default => "()".to_string(),
        syn::ReturnType::Type(_, ty) => rust_type(ty, local)?,
    };
    Ok(FnDecl { name, docs, args, ret })
}

/// `deviceId` -> `device_id`: the macro's argument names follow Rust's convention.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A type as the macros spell it: our own types through `$crate::`, others by their full path.
fn rust_type(ty: &syn::Type, local: &HashSet<String>) -> Result<String> {
    match ty {
        syn::Type::Ptr(p) => {
            Ok(format!("*{} {}", if p.mutability.is_some() { "mut" } else { "const" }, rust_type(&p.elem, local)?))
        }
        syn::Type::Path(p) => {
            let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
            if p.path.leading_colon.is_some() {
                Ok(format!("::{}", segs.join("::")))
            } else if segs.len() == 1 && local.contains(&segs[0]) {
                Ok(format!("$crate::{}", segs[0]))
            } else if segs.len() == 1
                && matches!(
                    segs[0].as_str(),
                    "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "usize" | "isize" | "f32"
                )
            {
                Ok(segs[0].clone())
            } else {
                Err(format!("type {} is not handled", p.to_token_stream()))
            }
        }
        other => Err(format!("type {} is not handled", other.to_token_stream())),
    }
}

fn fn_macro(acl: &[FnDecl], sim: &[FnDecl]) -> String {
    let mut s = String::new();
    s.push_str(
        "/// Calls `$m!` once with every entry point, in declaration order: first the ACL runtime functions of\n\
         /// `include/aclshm_acl.h` (group `Acl`), then the simulator extensions of `include/aclshm_sim.h`\n\
         /// (group `Sim`), each as `$(#[doc = ..])* Group name(arg: Type, ..) -> Ret;`.\n\
         #[macro_export]\n\
         macro_rules! for_each_fn {\n    ($m:ident) => {\n        $m! {\n",
    );
    for (group, fns) in [("Acl", acl), ("Sim", sim)] {
        for f in fns {
            for d in &f.docs {
                let _ = writeln!(s, "            {d}");
            }
            let args: Vec<String> = f.args.iter().map(|(a, t)| format!("{a}: {t}")).collect();
            let _ = writeln!(s, "            {group} {}({}) -> {};", f.name, args.join(", "), f.ret);
        }
    }
    s.push_str("        }\n    };\n}\n");
    s
}

fn error_table(facts: &Facts) -> Result<String> {
    let mut by_code: BTreeMap<i128, String> = BTreeMap::new();
    for (name, &v) in &facts.values {
        let is_code = name.starts_with("ACL_ERROR") || name == "ACL_SUCCESS" || name == "ACL_RT_SUCCESS";
        if !is_code {
            continue;
        }
        if v == 0 {
            by_code.insert(0, "ACL_SUCCESS".to_string());
            continue;
        }
        if let Some(prev) = by_code.insert(v, name.clone()) {
            // ACL_ERROR_NONE is the only alias the headers have.
            if prev != "ACL_ERROR_NONE" && name != "ACL_ERROR_NONE" {
                return Err(format!("error codes {prev} and {name} share the value {v}"));
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "/// Every status code declared in `include/aclshm_acl.h` with its name, sorted by code.");
    let _ = writeln!(s, "pub const ERROR_CODES: &[(aclError, &str)] = &[");
    for (code, name) in &by_code {
        let _ = writeln!(s, "    ({code}, \"{name}\"),");
    }
    let _ = writeln!(s, "];");
    Ok(s)
}

fn abi_cpp(facts: &Facts, fns: &[FnDecl]) -> String {
    let mut s = String::new();
    s.push_str(
        "// @generated by aclshm-sys-gen from ffi/include/aclshm_acl.h. Do not edit.\n\
         //\n\
         // ABI conformance check: compile with -I<dir holding the official acl/acl_rt.h>. Our typedefs and\n\
         // prototypes are re-declared after the official ones (C++ rejects a conflicting declaration of a C\n\
         // function or typedef), then every constant, enum value and struct layout of ours is asserted.\n\
         #include <cstddef>\n\
         #include <cstdint>\n\
         #include <type_traits>\n\n\
         #include \"acl/acl_base.h\"\n\
         #include \"acl/acl_rt.h\"\n\n\
         #define ACLSHM_ACL_EXTERNAL_TYPES\n\
         #include \"../include/aclshm_acl.h\"\n\n",
    );
    let _ = writeln!(s, "// {} prototypes re-declared by the include above:", fns.len());
    for f in fns {
        let _ = writeln!(s, "static_assert(std::is_function<decltype({0})>::value, \"{0}\");", f.name);
    }
    s.push_str("\n// Constants, error codes and enum values.\n");
    for (name, v) in &facts.values {
        let _ = writeln!(s, "static_assert(static_cast<long long>({name}) == {v}LL, \"value of {name}\");");
    }
    s.push_str("\n// Enum sizes.\n");
    for e in &facts.enums {
        let _ = writeln!(s, "static_assert(sizeof({e}) == 4, \"size of {e}\");");
    }
    s.push_str("\n// Struct layouts and field types.\n");
    for (name, fields) in &facts.structs {
        let l = &facts.layouts[name];
        let _ = writeln!(s, "static_assert(sizeof({name}) == {}, \"size of {name}\");", l.size.unwrap_or(0));
        let _ = writeln!(s, "static_assert(alignof({name}) == {}, \"alignment of {name}\");", l.align.unwrap_or(0));
        for (field, cty) in fields {
            let off = l.offsets.get(field).copied().unwrap_or(u64::MAX);
            let _ = writeln!(s, "static_assert(offsetof({name}, {field}) == {off}, \"offset of {name}::{field}\");");
            let (base, dims) = match cty.split_once('[') {
                Some((b, rest)) => (b.to_string(), format!("[{rest}")),
                None => (cty.clone(), String::new()),
            };
            let _ = writeln!(
                s,
                "static_assert(std::is_same<decltype({name}::{field}), {base}{dims}>::value, \"type of {name}::{field}\");"
            );
        }
    }
    s
}

/// Compile `cpp` (a variant of the check) with the official headers; Ok(true) when it compiles.
fn compiles(cxx: &str, official: &Path, dir: &Path, cpp: &str) -> Result<(bool, String)> {
    let file = dir.join("abi_check.cpp");
    fs::write(&file, cpp).map_err(|e| format!("write {}: {e}", file.display()))?;
    let out = Command::new(cxx)
        .args(["-std=c++17", "-fsyntax-only", "-Werror"])
        .arg(format!("-I{}", official.display()))
        .arg(&file)
        .output()
        .map_err(|e| format!("run {cxx}: {e}"))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn abi_check(ffi: &Path, official: &Path, cxx: &str) -> Result<()> {
    if !official.join("acl/acl_rt.h").exists() {
        return Err(format!("{} does not hold acl/acl_rt.h", official.display()));
    }
    let cpp = fs::read_to_string(ffi.join(ABI_CHECK_CPP)).map_err(|e| format!("read {ABI_CHECK_CPP}: {e}"))?;
    let header = fs::read_to_string(ffi.join(ACL_HEADER)).map_err(|e| format!("read {ACL_HEADER}: {e}"))?;
    let count = |prefix: &str| cpp.lines().filter(|l| l.starts_with(prefix)).count();
    println!(
        "aclshm-sys-gen: checking {} prototypes, {} values and {} size, layout and type facts against {}",
        count("static_assert(std::is_function"),
        count("static_assert(static_cast"),
        count("static_assert(sizeof(")
            + count("static_assert(alignof(")
            + count("static_assert(offsetof(")
            + count("static_assert(std::is_same"),
        official.display()
    );

    // A scratch tree that mirrors ffi/: abi/abi_check.cpp includes ../include/aclshm_acl.h.
    let scratch = std::env::temp_dir().join(format!("aclshm-abi-{}", std::process::id()));
    let (abi_dir, inc_dir) = (scratch.join("abi"), scratch.join("include"));
    fs::create_dir_all(&abi_dir).map_err(|e| format!("create {}: {e}", abi_dir.display()))?;
    fs::create_dir_all(&inc_dir).map_err(|e| format!("create {}: {e}", inc_dir.display()))?;
    let result = (|| {
        let put_header = |text: &str| {
            fs::write(inc_dir.join("aclshm_acl.h"), text).map_err(|e| format!("write scratch header: {e}"))
        };

        // The check must be able to fail: three deliberate mismatches, each of which must be rejected.
        let value_line = cpp
            .lines()
            .find(|l| l.contains("value of ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION"))
            .ok_or("no value assertion to mutate")?;
        let layout_line = cpp
            .lines()
            .find(|l| l.contains("offset of aclrtPhysicalMemProp::location"))
            .ok_or("no layout assertion to mutate")?;
        let proto = "aclError aclrtMapMem(void *virPtr, size_t size, size_t offset,";
        if !header.contains(proto) {
            return Err("no prototype to mutate".to_string());
        }
        let mutants = [
            ("a wrong flag value", cpp.replace(value_line, &value_line.replace("== 1LL", "== 2LL")), header.clone()),
            ("a wrong field offset", cpp.replace(layout_line, &layout_line.replace("== 12", "== 16")), header.clone()),
            (
                "a wrong prototype",
                cpp.clone(),
                header.replace(proto, "aclError aclrtMapMem(void *virPtr, size_t size, uint32_t offset,"),
            ),
        ];
        for (what, mutant_cpp, mutant_header) in &mutants {
            put_header(mutant_header)?;
            let (ok, _) = compiles(cxx, official, &abi_dir, mutant_cpp)?;
            if ok {
                return Err(format!("self-test failed: the check accepted {what}"));
            }
            println!("aclshm-sys-gen: self-test: {what} is rejected");
        }

        put_header(&header)?;
        let (ok, stderr) = compiles(cxx, official, &abi_dir, &cpp)?;
        if !ok {
            return Err(format!("our declarations differ from the official headers:\n{stderr}"));
        }
        println!("aclshm-sys-gen: ABI check passed: our declarations match {}", official.display());
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}
