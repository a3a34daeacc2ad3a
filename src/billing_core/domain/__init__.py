"""Pure billing rules: money, calendars, hierarchies, planning, pricing and tax.

Nothing here touches a database, Prefect or a template: every function takes values and
returns values, so each rule is tested on its own (tests/unit).
"""
