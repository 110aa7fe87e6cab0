"""Author implementations for the shipped spec set: ``fn(state, **arguments)``.

The state is the domain's JSON document ``{table: {key: row}}``; raising an
exception tells the agent the call failed (the state is left as it was).
"""

from __future__ import annotations

from typing import Any

State = dict[str, Any]


def _row(state: State, table: str, key: str, what: str) -> dict[str, Any]:
    rows = state.get(table) or {}
    if str(key) not in rows:
        raise KeyError(f"no {what} with id {key!r}")
    row: dict[str, Any] = rows[str(key)]
    return row


def restock_product(state: State, product_id: str, amount: int) -> dict[str, Any]:
    product = _row(state, "products", product_id, "product")
    product["stock"] = int(product.get("stock", 0)) + amount
    return product


def lend_book(state: State, book_id: str, member_id: str) -> dict[str, Any]:
    book = _row(state, "books", book_id, "book")
    _row(state, "members", member_id, "member")
    loans = state.setdefault("loans", {})
    if book_id in loans:
        raise ValueError(f"book {book_id} is already lent to {loans[book_id]['member_id']}")
    loans[book_id] = {"book_id": book_id, "member_id": member_id}
    return {"lent": book["title"], "to": member_id}


def return_book(state: State, book_id: str) -> dict[str, Any]:
    _row(state, "books", book_id, "book")
    loans = state.setdefault("loans", {})
    if book_id not in loans:
        raise ValueError(f"book {book_id} is not lent out")
    return {"returned": book_id, "by": loans.pop(book_id)["member_id"]}


def deposit_money(state: State, account_id: str, amount: float) -> dict[str, Any]:
    account = _row(state, "accounts", account_id, "account")
    account["balance"] = round(float(account["balance"]) + amount, 2)
    return account


def transfer_funds(state: State, from_account_id: str, to_account_id: str,
                   amount: float) -> dict[str, Any]:
    if from_account_id == to_account_id:
        raise ValueError("the two accounts must differ")
    payer = _row(state, "accounts", from_account_id, "account")
    payee = _row(state, "accounts", to_account_id, "account")
    if payer["currency"] != payee["currency"]:
        raise ValueError(f"currencies differ ({payer['currency']} vs {payee['currency']})")
    if float(payer["balance"]) < amount:
        raise ValueError(f"balance {payer['balance']} is less than {amount}")
    payer["balance"] = round(float(payer["balance"]) - amount, 2)
    payee["balance"] = round(float(payee["balance"]) + amount, 2)
    return {"from": payer, "to": payee}
