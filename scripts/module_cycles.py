#!/usr/bin/env python3
"""Import cycles between the modules of each crate: `crate::a::b` and `super::x` references
(outside `#[cfg(test)]` modules) make an edge from the referring module to the referred one; a
module's parent declaring it (`mod x;`) is not an edge. Prints every cycle; exits 1 if any."""
import os, re, sys

def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)

def strip_tests(text):
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]

def graph(root, modules):
    edges = {m: set() for m in modules}
    for m, path in modules.items():
        text = strip_tests(open(path).read())
        text = re.sub(r"//[^\n]*", "", text)
        refs = set()
        for g in re.finditer(r"\bcrate((?:::\w+)+)", text):
            refs.add(tuple(g.group(1).split("::")[1:]))
        for g in re.finditer(r"\bsuper((?:::\w+)+)", text):
            base = m[:-1] if not path.endswith(("mod.rs", "lib.rs")) else m[:-1]
            refs.add(base + tuple(g.group(1).split("::")[1:]))
        for g in re.finditer(r"use\s+(crate|super)::\{([^;]*)\};", text, re.S):
            base = () if g.group(1) == "crate" else m[:-1]
            for item in re.split(r"[,{}\s]+", g.group(2)):
                if item and item != "self":
                    refs.add(base + tuple(item.split("::")))
        for r in refs:
            # The longest module prefix of the referred path.
            for k in range(len(r), 0, -1):
                if r[:k] in modules and r[:k] != m:
                    edges[m].add(r[:k])
                    break
    return edges

def cycles(edges):
    found, index, low, stack, on, n = [], {}, {}, [], set(), [0]
    def strong(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)
    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)
    return found

bad = 0
for crate in sys.argv[1:]:
    root = os.path.join(crate, "src")
    modules = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs") and f != "main.rs":
                p = os.path.join(d, f)
                modules[module_of(root, p)] = p
    for comp in cycles(graph(root, modules)):
        bad += 1
        print(f"{crate}: import cycle between " + ", ".join("::".join(c) or "lib" for c in sorted(comp)))
sys.exit(1 if bad else 0)
