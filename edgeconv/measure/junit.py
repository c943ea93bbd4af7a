"""JUnit XML for `validate`: one test case per check, so CI systems list each check with its result."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgeconv.artifacts import atomic_write_bytes
from edgeconv.measure.validate import FAILED, SKIPPED, ValidationReport


def junit_xml(report: ValidationReport, suite: str = "edgeconv.validate") -> bytes:
    cases = report.checks
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(sum(c.status == FAILED for c in cases)),
        errors="0",
        skipped=str(sum(c.status == SKIPPED for c in cases)),
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    props = ET.SubElement(ts, "properties")
    for k, v in (("model", report.model), ("source", report.source or ""), ("data", report.data)):
        ET.SubElement(props, "property", name=k, value=str(v))
    classname = f"{suite}.{Path(report.model).stem}"
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=c.name, time=f"{c.seconds:.3f}")
        if c.status == FAILED:
            ET.SubElement(tc, "failure", message=c.detail[:500], type="ValidationFailure").text = c.detail
        elif c.status == SKIPPED:
            ET.SubElement(tc, "skipped", message=c.detail[:500])
        else:
            ET.SubElement(tc, "system-out").text = c.detail
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def write_junit(report: ValidationReport, path: str | Path) -> Path:
    return atomic_write_bytes(path, junit_xml(report))
