#!/usr/bin/env python3
"""The module graph of src/ must have no cycle.

A module is src/<name>.c together with src/<name>.h (either may be absent:
tls.h has no .c).  Module X depends on module Y when

  - X's object file in the static library uses (nm: U) a global symbol
    that Y's object file defines, or
  - src/X.c or src/X.h includes "Y.h" (a header reaches into Y even when
    no symbol crosses: a struct's fields, a static inline function).

Both kinds count because either one makes X break when Y changes, and a
cycle means no module of it can be understood, tested or replaced below
the others.  Function pointers handed down (the pool passing a wake hook
to host.c) make no edge: that is how a lower module calls up.

Exit status: 0 acyclic, 1 a cycle (each printed with the symbols and
includes that make its edges), 2 a bad invocation or an object missing.

  module_graph.py --src DIR --lib libpgguard.a [--nm nm] [--order]
  module_graph.py --self-test
"""

import argparse
import os
import re
import subprocess
import sys

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def modules_in(src):
    """Module names of src/: the stems of its .c and .h files."""
    names = set()
    for f in os.listdir(src):
        stem, ext = os.path.splitext(f)
        if ext in ('.c', '.h'):
            names.add(stem)
    return names


def object_module(obj, modules):
    """The module an archive member belongs to: meson names src/x.c's object
    src_x.c.o; match the longest module name that ends the member's name
    after '_' or at its start."""
    if not obj.endswith('.c.o'):
        return None
    base = obj[:-len('.c.o')]
    best = None
    for m in modules:
        if base == m or base.endswith('_' + m):
            if best is None or len(m) > len(best):
                best = m
    return best


def archive_members(path):
    """The member names of an ar archive (GNU or BSD long names), read
    directly: nm prints nothing for an object without symbols (types.c
    built without libpqtypes), which is not a missing object."""
    names = []
    with open(path, 'rb') as f:
        data = f.read()
    if data[:8] == b'!<thin>\n':
        raise ValueError('%s: a thin archive' % path)
    if data[:8] != b'!<arch>\n':
        raise ValueError('%s: not an ar archive' % path)
    pos, longnames = 8, b''
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        name = hdr[:16].decode('ascii', 'replace').rstrip()
        size = int(hdr[48:58].decode('ascii').strip())
        body = data[pos + 60:pos + 60 + size]
        if name == '//':
            longnames = body
        elif name.startswith('#1/'):  # BSD: the name opens the body
            n = int(name[3:])
            names.append(body[:n].rstrip(b'\0').decode())
        elif name.startswith('/') and name[1:].isdigit():
            off = int(name[1:])
            end = longnames.find(b'/\n', off)
            names.append(longnames[off:end].decode())
        elif name not in ('/', '/SYM64/', '__.SYMDEF', '__.SYMDEF SORTED'):
            names.append(name.rstrip('/'))
        pos += 60 + size + (size & 1)
    return names


def parse_nm(text, modules):
    """nm -A -P output of the archive -> ({module: defined}, {module: used}).
    Lines look like 'lib.a[src_pool.c.o]: pgg__x T 0 10'."""
    defined, used = {}, {}
    line_re = re.compile(r'^.*\[([^\]]+)\]:\s+(\S+)\s+([A-Za-z])\b')
    for line in text.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        obj, sym, kind = m.groups()
        mod = object_module(obj, modules)
        if mod is None:
            continue
        defined.setdefault(mod, set())
        used.setdefault(mod, set())
        if kind == 'U':
            used[mod].add(sym)
        elif kind.isupper():  # global: T, D, B, R, C, W, V, ...
            defined[mod].add(sym)
    return defined, used


def include_edges(sources, modules):
    """{(X, Y): [why]} from '#include "Y.h"' in X.c or X.h; sources maps a
    file name (x.c, x.h) to its text."""
    edges = {}
    for fname, text in sources.items():
        src_mod = os.path.splitext(fname)[0]
        for inc in INCLUDE_RE.findall(text):
            dst = os.path.splitext(os.path.basename(inc))[0]
            if dst == src_mod or dst not in modules or not inc.endswith('.h'):
                continue
            edges.setdefault((src_mod, dst), []).append(
                '%s includes "%s"' % (fname, inc))
    return edges


def symbol_edges(defined, used):
    """{(X, Y): [symbols]}: X uses what Y defines."""
    owner = {}
    for mod, syms in defined.items():
        for s in syms:
            owner.setdefault(s, set()).add(mod)
    edges = {}
    for mod, syms in used.items():
        for s in sorted(syms):
            for dst in owner.get(s, ()):
                if dst != mod:
                    edges.setdefault((mod, dst), []).append(s)
    return edges


def strongly_connected(nodes, adj):
    """Tarjan's algorithm, iterative: the components, each a sorted list."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(adj.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(adj.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps


def shortest_cycle(start, members, adj):
    """A shortest cycle through start inside one component (BFS)."""
    prev = {start: None}
    queue = [start]
    while queue:
        nxt = []
        for v in queue:
            for w in sorted(adj.get(v, ())):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        queue = nxt
    return [start]


def layers(nodes, adj):
    """Acyclic graph -> each module's height (0: depends on no module)."""
    height = {}

    def h(v):
        if v not in height:
            height[v] = 1 + max((h(w) for w in adj.get(v, ())), default=-1)
        return height[v]

    for v in nodes:
        h(v)
    return height


def build(modules, defined, used, sources):
    edges = {}
    for (a, b), syms in symbol_edges(defined, used).items():
        edges.setdefault((a, b), []).extend(syms)
    for (a, b), why in include_edges(sources, modules).items():
        edges.setdefault((a, b), []).extend(why)
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    return edges, adj


def report(modules, edges, adj, out):
    """Print every cycle; return how many components have one."""
    cyclic = [c for c in strongly_connected(modules, adj) if len(c) > 1]
    for n, comp in enumerate(cyclic, 1):
        members = set(comp)
        cycle = shortest_cycle(comp[0], members, adj)
        out.write('cycle %d: %s (a shortest one: %s)\n' %
                  (n, ', '.join(comp), ' -> '.join(cycle)))
        for a in comp:
            for b in sorted(adj.get(a, ())):
                if b in members:
                    out.write('  %s -> %s: %s\n' %
                              (a, b, ', '.join(edges[(a, b)])))
    return len(cyclic)


def run(args):
    modules = modules_in(args.src)
    try:
        nm = subprocess.run([args.nm, '-A', '-P', args.lib], check=True,
                            capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write('module_graph: %s -A -P %s: %s\n' % (args.nm, args.lib, e))
        return 2
    defined, used = parse_nm(nm, modules)
    try:
        members = {object_module(m, modules) for m in archive_members(args.lib)}
    except (OSError, ValueError) as e:
        sys.stderr.write('module_graph: %s\n' % e)
        return 2
    # A .c without an object would hide its edges: refuse to pass then.
    missing = sorted(os.path.splitext(f)[0] for f in os.listdir(args.src)
                     if f.endswith('.c') and os.path.splitext(f)[0] not in members)
    if missing:
        sys.stderr.write('module_graph: no object in %s for: %s\n' %
                         (args.lib, ', '.join(missing)))
        return 2
    sources = {}
    for f in os.listdir(args.src):
        if f.endswith(('.c', '.h')):
            with open(os.path.join(args.src, f), encoding='utf-8') as fh:
                sources[f] = fh.read()
    edges, adj = build(modules, defined, used, sources)
    ncycles = report(modules, edges, adj, sys.stdout)
    if ncycles:
        print('module_graph: %d cycle(s) among the modules of %s' %
              (ncycles, args.src))
        return 1
    height = layers(modules, adj)
    if args.order:
        for v in sorted(modules, key=lambda m: (height[m], m)):
            deps = sorted(adj.get(v, ()))
            print('%2d %-14s %s' % (height[v], v, ' '.join(deps)))
    print('module_graph: %d modules, %d edges, no cycle' % (len(modules), len(edges)))
    return 0


def self_test():
    """The checker itself, on a made-up library: it must find a cycle made of
    one symbol edge and one include edge, name both, and pass once the
    include goes."""
    modules = {'pool', 'health', 'host', 'tls'}
    nm = '\n'.join([
        'lib.a[src_pool.c.o]: pgg__health_start U',
        'lib.a[src_pool.c.o]: pgg__pool_emit T 0 10',
        'lib.a[src_pool.c.o]: helper t 0 10',
        'lib.a[src_health.c.o]: pgg__health_start T 0 10',
        'lib.a[src_health.c.o]: pgg__host_borrow U',
        'lib.a[src_health.c.o]: helper U',
        'lib.a[src_host.c.o]: pgg__host_borrow T 0 10',
    ])
    defined, used = parse_nm(nm, modules)
    assert object_module('src_conninfo_scan.c.o', {'conninfo', 'conninfo_scan', 'scan'}) == 'conninfo_scan'
    sources = {'health.c': '#include "pool.h"\n#include <stdio.h>\n',
               'pool.h': '#include "host.h"\n# include "tls.h"\n',
               'host.h': '#include "pgg_config.h"\n'}
    edges, adj = build(modules, defined, used, sources)
    assert edges[('pool', 'health')] == ['pgg__health_start'], edges
    assert edges[('health', 'pool')] == ['health.c includes "pool.h"'], edges
    assert ('health', 'host') in edges and ('pool', 'tls') in edges, edges
    assert ('health', 'pool') in edges and 'helper' not in str(edges), edges

    class Sink:
        text = ''

        def write(self, s):
            self.text += s
    sink = Sink()
    assert report(modules, edges, adj, sink) == 1
    assert 'health -> pool: health.c includes "pool.h"' in sink.text, sink.text
    assert 'pool -> health: pgg__health_start' in sink.text, sink.text
    del sources['health.c']
    edges, adj = build(modules, defined, used, sources)
    sink = Sink()
    assert report(modules, edges, adj, sink) == 0, sink.text
    h = layers(modules, adj)
    assert h['host'] == 0 and h['health'] == 1 and h['pool'] == 2, h
    # Three modules in a ring, through symbols only.
    ring = {'a', 'b', 'c'}
    d, u = parse_nm('\n'.join([
        'l[a.c.o]: fa T', 'l[a.c.o]: fb U',
        'l[b.c.o]: fb T', 'l[b.c.o]: fc U',
        'l[c.c.o]: fc T', 'l[c.c.o]: fa U']), ring)
    edges, adj = build(ring, d, u, {})
    sink = Sink()
    assert report(ring, edges, adj, sink) == 1
    assert 'a -> b -> c -> a' in sink.text, sink.text
    print('module_graph self-test: ok')
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--src', help='the src/ directory')
    p.add_argument('--lib', help='the static library built from it')
    p.add_argument('--nm', default='nm')
    p.add_argument('--order', action='store_true',
                   help='when acyclic, print each module with its height and what it depends on')
    p.add_argument('--self-test', action='store_true')
    args = p.parse_args()
    if args.self_test:
        return self_test()
    if not args.src or not args.lib:
        p.error('--src and --lib are required')
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
