# shellcheck shell=bash
# shellcheck disable=SC2034  # the scenario_* variables are for the scripts that source this
# The demo scenarios of the bench, one definition for bench/run.sh and bench/ab_compare.sh
# (sourced, not run): each scenario's agent config, demo flags, and the floors it is read
# against.
#   bench_write_configs DIR      writes the agent configs the scenarios name into DIR
#   bench_scenario NAME DIR      sets scenario_condition, scenario_config, scenario_flags (array)
# BENCH_SCENARIOS run one by one; BENCH_PRECOPY_PAIR runs as a pair (bench/run.sh).
#
# `condition` names the floors a scenario is read against (lazymig-floors measures both): "busy"
# while the bulk stream saturates (the agents keep the CPUs running, so wake-ups are cheap),
# "idle" with the bulk stream capped (the CPUs idle between faults, and each wake-up pays it).

# The three that compare bulk capped with saturated (bench/ab_compare.sh's default set).
BENCH_BASE_SCENARIOS=(quiet-bulk-random saturated-bulk-random saturated-bulk-hot-4vcpu)
# With the base set, every quiet/saturated pair of issue 14's tail bar (bench/tail_bar.py):
# 1 and 4 vCPUs, random and hot.
BENCH_TAIL_SCENARIOS=(quiet-bulk-hot-4vcpu quiet-bulk-hot saturated-bulk-hot
                      quiet-bulk-random-4vcpu saturated-bulk-random-4vcpu)
# Every kind of guest memory, the guest writing while pages arrive (hugetlb raises
# vm.nr_hugepages for the run and puts it back).
BENCH_MEMORY_SCENARIOS=(memfd-write-4vcpu memfd-minor-write-4vcpu guest_memfd-write-4vcpu
                        hugetlb-write-4vcpu hugetlb-minor-write-4vcpu)
# Pre-copy against pure post-copy (issue 19): the same guest (memfd, a hot working set, KVM
# vCPUs), the first with `--precopy auto` (the source VM's vCPUs writing while the rounds run,
# then paused), the second paused from the start. bench/run.sh runs them as a pair, their runs
# interleaved, and prints the ratio of their demand faults after the switch.
BENCH_PRECOPY_PAIR=(precopy-auto-hot postcopy-hot)
BENCH_SCENARIOS=("${BENCH_BASE_SCENARIOS[@]}" "${BENCH_TAIL_SCENARIOS[@]}"
                 "${BENCH_MEMORY_SCENARIOS[@]}")

bench_write_configs() {  # dir
  printf 'migration:\n  bulk_rate_limit_mib_s: 32\n' > "$1/quiet.yaml"
  : > "$1/none.yaml"
}

bench_scenario() {  # name dir
  local name=$1 dir=$2
  case $name in
    quiet-bulk-* | saturated-bulk-*)
      local access=${name#*-bulk-} vcpus=1
      [[ $access == *-4vcpu ]] && vcpus=4 access=${access%-4vcpu}
      case $access in
        random) scenario_flags=(--pattern random --vcpus "$vcpus" --accesses 2000) ;;
        hot) scenario_flags=(--pattern hot --vcpus "$vcpus" --accesses 5000) ;;
        *) echo "unknown scenario '$name'; known: ${BENCH_SCENARIOS[*]}" >&2; return 1 ;;
      esac
      if [[ $name == quiet-* ]]; then
        scenario_condition=idle scenario_config=$dir/quiet.yaml
      else
        scenario_condition=busy scenario_config=$dir/none.yaml
      fi ;;
    memfd-write-4vcpu | memfd-minor-write-4vcpu | guest_memfd-write-4vcpu | hugetlb-write-4vcpu | \
      hugetlb-minor-write-4vcpu)
      scenario_condition=busy scenario_config=$dir/none.yaml
      scenario_flags=(--memory "${name%-write-4vcpu}" --pattern write --vcpus 4 --accesses 5000) ;;
    precopy-auto-hot | postcopy-hot)
      local mode=auto
      [[ $name == postcopy-hot ]] && mode=off
      scenario_condition=busy scenario_config=$dir/none.yaml
      scenario_flags=(--memory memfd --pattern hot --vcpus 2 --accesses 20000 --precopy "$mode") ;;
    *)
      echo "unknown scenario '$name'; known: ${BENCH_SCENARIOS[*]} ${BENCH_PRECOPY_PAIR[*]}" >&2
      return 1 ;;
  esac
}
