# Source me. A Go module in the current directory that builds commands of k8s.io/kubernetes at a release, shared
# by hack/build-control-plane.sh and hack/build-node.sh so both build from the same tree.
# Needs: a `run` function (run a step, log it, die on failure) and a `die` function in the caller.

# k8s_module_init VERSION NAME: `go mod init NAME` here, with every staging module k8s.io/kubernetes replaces by a
# relative path mapped to its published v0.X.Y, and the upstream language version and GODEBUG defaults.
k8s_module_init() {
  local version=$1 name=$2 gomod staging goline n=0
  run go mod init "$name"
  gomod=$(go mod download -json "k8s.io/kubernetes@${version}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') \
    || die "cannot download k8s.io/kubernetes@${version} from the module proxy"
  staging=$(python3 - "$gomod" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
mods, others = [], []
for m in re.finditer(r"^[ \t]*(?:replace[ \t]+)?([^\s(]+)(?:[ \t]+\S+)?[ \t]+=>[ \t]+(\S+)(?:[ \t]+\S+)?[ \t]*$", text, re.M):
    (mods if m.group(2).startswith("./staging/") else others).append(m.group(1))
if others:
    sys.exit("unexpected non-staging replace directives in k8s.io/kubernetes go.mod: " + ", ".join(others))
print("\n".join(mods))
PY
  ) || die "could not derive staging modules from $gomod"
  [ -n "$staging" ] || die "no staging modules found in $gomod"
  for m in $staging; do run go mod edit "-replace=$m=$m@v0.${version#v1.}"; n=$((n + 1)); done
  echo "k8s-module: $n staging modules replaced at v0.${version#v1.} (derived from upstream go.mod)"
  goline=$(awk '/^go [0-9]/{print $2; exit}' "$gomod")
  [ -n "$goline" ] && run go mod edit "-go=$goline"
  grep -E '^godebug ' "$gomod" | while read -r _ kv; do go mod edit "-godebug=$kv" >/dev/null 2>&1 || true; done
}

# k8s_ldflags VERSION: the -ldflags that stamp the version `kubectl version` and /version report.
k8s_ldflags() {
  local version=$1 minor date ld="-s -w" p
  minor=${version#v1.}; minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=${version} -X $p.gitMajor=1 -X $p.gitMinor=${minor} -X $p.gitTreeState=clean -X $p.buildDate=${date}"
  done
  echo "$ld"
}
