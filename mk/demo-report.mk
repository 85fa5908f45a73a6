# `make demo-report`: a picture of a failover (docs/REPORT.md). Mock vendors and
# Envoy with the demo's filter configuration under steady load (~25 req/s),
# the preferred vendor answering 503 from 10 s to 30 s of a 50 s run; writes
# docs/failover-timeline.json and docs/failover-timeline.svg. About a minute.
# Flags through DEMO_REPORT_ARGS (scripts/demo_report.py --help), e.g.
#   make demo-report DEMO_REPORT_ARGS="--seconds 60 --outage-end 40 --out /tmp/report"
.PHONY: demo-report
demo-report: setup build
	$(VPY) scripts/demo_report.py $(DEMO_REPORT_ARGS)
